"""Resumable lens training: the recipe a run follows, the state it is in, and their checkpoint files.

A checkpoint is a folder with ``state.safetensors`` (lens parameters, optimiser tensors, RNG state)
and ``state.json`` (format, step, data position, recipe, optimiser layout, loss history), written
atomically through :func:`lmscope.interventions.artifacts.save_artifact`; nothing is unpickled. A run
resumes only under the same :class:`Recipe`, and then ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.artifacts import load_artifact, save_artifact
from lmscope.interventions.errors import InputError, LmscopeError

if TYPE_CHECKING:
    from ..lenses import TunedLens

CHECKPOINT_FORMAT = 1
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"


@dataclass(frozen=True)
class Recipe:
    """Every setting that decides what a training run computes (saved in checkpoints and compared on resume)."""

    steps: int
    tokens_per_step: int
    seq_len: int
    lr: float
    init: str
    init_tokens: int
    ridge: float
    weight_decay: float
    grad_clip: float
    readings: list[str]
    seed: int
    corpus: list[str]
    split: str | None
    fingerprint: str

    @property
    def chunks_per_step(self) -> int:
        """Corpus chunks (of ``seq_len`` tokens) per fine-tune step."""
        return self.tokens_per_step // self.seq_len

    @property
    def init_chunks(self) -> int:
        """Corpus chunks read by the closed-form init (0 for ``init="zero"``)."""
        return math.ceil(self.init_tokens / self.seq_len) if self.init == "lstsq" else 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def changes(self, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{setting: (saved, now)}`` for every setting that differs from a saved recipe."""
        now = self.as_dict()
        return {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now) if saved.get(k) != now.get(k)}


@dataclass
class TrainState:
    """Where a run stands: fine-tune steps done, corpus chunks consumed, loss per step and the RNG."""

    generator: torch.Generator
    step: int = 0
    position: int = 0
    loss_history: list[float] = field(default_factory=list)

    @classmethod
    def fresh(cls, seed: int) -> TrainState:
        return cls(torch.Generator().manual_seed(seed))


def save_checkpoint(folder: Path, lens: TunedLens, opt: torch.optim.Optimizer, state: TrainState,
                    recipe: Recipe) -> None:
    """Write lens, optimiser and state into ``folder`` (atomically replacing the previous checkpoint)."""
    tensors: dict[str, torch.Tensor] = {"lens.weight": lens.weight.detach(), "lens.bias": lens.bias.detach(),
                                        "rng.generator": state.generator.get_state()}
    opt_meta = _optimizer_to_artifact(opt, tensors)
    meta = {"format": CHECKPOINT_FORMAT, "step": state.step, "data_position": state.position,
            "recipe": recipe.as_dict(), "optimizer": opt_meta, "loss_history": state.loss_history}
    save_artifact(folder, meta, tensors, config_name=STATE_JSON, tensors_name=STATE_TENSORS)


def load_checkpoint(folder: Path, lens: TunedLens, opt: torch.optim.Optimizer, recipe: Recipe) -> TrainState:
    """Restore lens and optimiser from ``folder`` and return the saved state; the recipe must match."""
    meta, tensors = load_artifact(folder, config_name=STATE_JSON, tensors_name=STATE_TENSORS)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise LmscopeError(f"{folder} is not a lens-training checkpoint of format {CHECKPOINT_FORMAT}.")
    diff = recipe.changes(meta["recipe"])
    if diff:
        raise InputError(f"The checkpoint in {folder} was made with different settings (saved, now): {diff}. "
                         "Resume with the same settings, or start afresh without --resume.")
    with torch.no_grad():
        lens.weight.copy_(tensors["lens.weight"].to(lens.weight.device))
        lens.bias.copy_(tensors["lens.bias"].to(lens.bias.device))
    opt.load_state_dict(_optimizer_from_artifact(meta["optimizer"], tensors))
    generator = torch.Generator()
    generator.set_state(tensors["rng.generator"])
    return TrainState(generator, step=int(meta["step"]), position=int(meta["data_position"]),
                      loss_history=list(meta.get("loss_history", [])))


def _optimizer_to_artifact(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Optimiser state as JSON (layout, scalars) plus tensors added to ``tensors`` as ``opt.<param>.<key>``."""
    sd = opt.state_dict()
    layout: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        keys = []
        for k, v in st.items():
            if isinstance(v, torch.Tensor):  # [key, is-0-dim]: safetensors stores 0-dim tensors as [1]
                tensors[f"opt.{pid}.{k}"] = v.detach().clone() if v.dim() else v.detach().reshape(1)
                keys.append([k, v.dim() == 0])
            else:
                keys.append([k, v])
        layout["state"][str(pid)] = keys
    return layout


def _optimizer_from_artifact(layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Inverse of :func:`_optimizer_to_artifact`: an optimiser ``state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for pid, keys in layout["state"].items():
        st: dict[str, Any] = {}
        for k, scalar in keys:
            if isinstance(scalar, bool):
                t = tensors[f"opt.{pid}.{k}"]
                st[k] = t.reshape(()) if scalar else t
            else:
                st[k] = scalar
        state[int(pid)] = st
    return {"state": state, "param_groups": layout["param_groups"]}
