"""Worker for the data-parallel collection test: ``torchrun --nproc_per_node=2 dp_collect_worker.py OUT``.

Each process writes its share of the prompts into one dataset. ``LMSCOPE_TEST_FAIL_RANK=r`` makes rank ``r``
stop after its first shard (an interruption) so that the test can check the resumed run. The test puts ``tests/``
on ``PYTHONPATH`` (for ``tiny_models``).
"""

from __future__ import annotations

import os
import sys

import torch
from tiny_models import build_tiny

from lmscope.interventions import HookedModel
from lmscope.interventions.datasets import write_dataset
from lmscope.interventions.distributed import DataParallel

PROMPTS = [[i % 90 + 1, (3 * i) % 90 + 2, (7 * i) % 90 + 3, i % 5 + 4][: 2 + i % 3] for i in range(11)]
SITES = ["resid_post.0", "head_z.1"]


def main() -> None:
    torch.set_num_threads(1)
    model = HookedModel(build_tiny("llama").cpu())
    dp = DataParallel.from_env("gloo")
    fail = os.environ.get("LMSCOPE_TEST_FAIL_RANK")
    if fail is not None and int(fail) == dp.rank:
        real = model.run
        calls = {"n": 0}

        def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 3:
                raise SystemExit(3)
            return real(*args, **kwargs)
        model.run = flaky  # type: ignore[method-assign]
    write_dataset(model, sys.argv[1], PROMPTS, SITES, list(range(len(PROMPTS))), "all", batch_size=2, shard_rows=4,
                  data_parallel=dp)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
