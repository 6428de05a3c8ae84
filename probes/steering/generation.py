"""``generation_sweep``: what a steering vector does to generated text, scale by scale and prompt by prompt.

The quickest look at any steer (a :class:`SteeringVector`, one ``Steer``, or a list of interventions):
``scales x prompts`` greedy continuations in one table, ``.to_markdown()`` to print it. Scale ``0`` is the
unsteered model (no steer attached at all). ``steering_tradeoff`` scores a sweep; this one shows the text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from lmscope.interventions.base import Intervention, Interventions, as_interventions
from lmscope.interventions.errors import InputError
from lmscope.interventions.positions import PositionSpec
from lmscope.interventions.specs import LayerSpec, as_prompt_list
from lmscope.interventions.steer import Steer

from .scale import check_unit
from .vectors import SteeringVector

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


@dataclass
class GenerationSweep:
    """Greedy continuations: ``texts[i][j]`` is prompt ``j`` at ``scales[i]``; ``unit`` is what a scale counts."""

    scales: list[float]
    prompts: list[str]
    texts: list[list[str]]
    unit: str = "raw"
    max_new_tokens: int = 0

    def rows(self) -> list[dict[str, Any]]:
        """One ``{"scale", "prompt", "text"}`` dict per cell, prompt by prompt, scales in order."""
        return [{"scale": s, "prompt": p, "text": self.texts[i][j]}
                for j, p in enumerate(self.prompts) for i, s in enumerate(self.scales)]

    def text(self, scale: float, prompt: int | str = 0) -> str:
        """The continuation at ``scale`` of a prompt (its index or text)."""
        if scale not in self.scales:
            raise InputError(f"No scale {scale:g} in this sweep; it has {', '.join(f'{s:g}' for s in self.scales)}.")
        j = prompt if isinstance(prompt, int) else self.prompts.index(prompt)
        return self.texts[self.scales.index(scale)][j]

    def to_markdown(self) -> str:
        """A Markdown table: scale | prompt | continuation (``|`` and newlines escaped)."""
        unit = " (x typical residual norm)" if self.unit == "resid" else ""
        lines = [f"| scale{unit} | prompt | continuation |", "|---:|---|---|"]
        for row in self.rows():
            lines.append(f"| {row['scale']:g} | {_cell(row['prompt'])} | {_cell(row['text'])} |")
        return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "⏎").strip() or " "


def scaled_interventions(steer: SteeringVector | Interventions, scale: float, *, unit: str = "raw",
                         layers: LayerSpec = None, positions: PositionSpec = "all") -> list[Intervention]:
    """The interventions of one sweep cell: a vector's ``to_steer(scale, ...)``; for interventions, every ``Steer``
    with its scale multiplied by ``scale`` (others unchanged). Scale 0 drops every steer."""
    if isinstance(steer, SteeringVector):
        return [] if scale == 0 else list(steer.to_steer(scale, positions=positions, layers=layers, unit=unit))
    if unit != "raw" or layers is not None or positions != "all":
        raise InputError("unit, layers and positions apply to a SteeringVector; a Steer already fixes its "
                         "vector, sites and positions (scales multiply its own scale).")
    out: list[Intervention] = []
    for iv in as_interventions(steer):
        if isinstance(iv, Steer):
            if scale != 0:
                out.append(Steer.from_config({**iv.config(), "scale": iv.scale * scale}, iv.tensors()))
        else:
            out.append(iv)
    return out


def generation_sweep(model: HookedModel, steer: SteeringVector | Interventions, scales: Sequence[float],
                     prompts: str | Sequence[Any], max_new_tokens: int = 24, *, unit: str = "raw",
                     layers: LayerSpec = None, positions: PositionSpec = "all") -> GenerationSweep:
    """Greedy continuations of ``prompts`` under ``steer`` at each scale: a table of texts.

    ``steer`` is a :class:`SteeringVector` (applied with ``to_steer(scale, unit=unit, layers=layers,
    positions=positions)``) or a ``Steer`` / list of interventions (each ``Steer``'s scale multiplied by the
    sweep's scale). All prompts of one scale generate in one batch (left-padded; each equals its own run).
    A model without a tokenizer gets the new token ids, space-separated, as its texts.
    """
    check_unit(unit)
    if not scales:
        raise InputError("scales is empty; give at least one scale (0 = unsteered).")
    bad = [s for s in scales if not isinstance(s, (int, float)) or not math.isfinite(float(s))]
    if bad:
        raise InputError(f"scales must be finite numbers, got {bad}.")
    items = as_prompt_list([prompts] if isinstance(prompts, str) else list(prompts), "prompts")
    if isinstance(steer, SteeringVector):
        steer.check(model)
    texts = []
    for s in scales:
        ivs = scaled_interventions(steer, float(s), unit=unit, layers=layers, positions=positions)
        gen = model.generate(items, max_new_tokens, interventions=ivs)
        # without a tokenizer the "texts" are the new token ids
        texts.append(list(gen.texts) if gen.texts is not None else [" ".join(map(str, row.tolist()))
                                                                     for row in gen.new_tokens])
    labels = [p if isinstance(p, str) else str(list(p)) for p in items]
    return GenerationSweep([float(s) for s in scales], labels, texts, unit, max_new_tokens)
