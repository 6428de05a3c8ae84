"""Data-parallel set-up shared by lens training and activation collection (torchrun / accelerate launch).

lmscope never schedules processes itself: ``torchrun --nproc_per_node=N`` (or ``accelerate launch``) starts
them and sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``; :meth:`DataParallel.from_env` joins that
process group (gloo on CPU, nccl on CUDA) and tells each process which share of the data is its own. With
one process everything here is a no-op, so the same code runs unchanged on a laptop and on a cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch

from .errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class DataParallel:
    """Where this process stands: ``rank`` of ``world_size`` (1 = no data parallelism)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes shared files (checkpoints, the final artifact) and shows progress."""
        return self.rank == 0

    @classmethod
    def from_env(cls, backend: str | None = None) -> DataParallel:
        """Join the process group a launcher set up (env ``WORLD_SIZE`` > 1), else a single process."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_available():
            raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
        chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(chosen)
        return cls(dist.get_rank(), dist.get_world_size())

    def owns(self, index: int) -> bool:
        """Whether item ``index`` of a stream dealt round-robin belongs to this process."""
        return index % self.world_size == self.rank

    def split(self, n: int, what: str = "items", require_even: bool = False) -> tuple[int, int]:
        """This process's contiguous share ``[start, stop)`` of ``n`` items.

        With ``require_even`` a world size that does not divide ``n`` is refused (say so rather than give
        processes unequal work that would change the arithmetic).
        """
        if require_even and n % self.world_size:
            raise InputError(f"{n} {what} cannot be split evenly over {self.world_size} processes; use a "
                             f"multiple of {self.world_size}.")
        per, extra = divmod(n, self.world_size)
        start = self.rank * per + min(self.rank, extra)
        return start, start + per + (1 if self.rank < extra else 0)

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        """This process's contiguous share of ``items``."""
        start, stop = self.split(len(items))
        return items[start:stop]

    def all_reduce_sum_(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor over processes, in place (no-op with one process)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def describe(self) -> dict[str, Any]:
        return {"rank": self.rank, "world_size": self.world_size}
