"""The reference sweep: one full forward per cell and pair with the core ``Patch`` intervention.

Slow and simple on purpose: it shares no batching or cache reuse with the exact engine
(:mod:`.exact`), so comparing the two checks the engine, and it is what the sweep falls back to where
partial forwards are not exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from lmscope.interventions.base import Intervention
from lmscope.interventions.edit import Edit
from lmscope.interventions.patch import Patch
from lmscope.interventions.progress import bar_disable
from lmscope.interventions.sites import ATTENTION_MAP_SITES, Site

from .metrics import Metric
from .pairs import Cell, Pair
from .scoring import pair_scores

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


def loop_values(model: HookedModel, pair: Pair, cells: list[Cell], source: dict[Site, torch.Tensor],
                metric: Metric | Sequence[Metric], progress: bool | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: one full forward per cell and pair with the core ``Patch`` intervention (a head cell
    patches only that head, ``Patch(..., heads=[h])``, a neuron cell ``neurons=[n]``; an attention-map cell, which
    ``Patch`` does not write, an ``Edit`` of its query row). Returns ``[cells, n]`` and the base logits
    ``[n, vocab]``."""
    from tqdm.auto import tqdm

    n_pairs = pair.base.shape[0]
    base_logits = model.run(pair.base).last_logits()
    out = torch.empty(len(cells), n_pairs)
    show = len(cells) * n_pairs > 32 if progress is None else progress
    for k, c in enumerate(tqdm(cells, desc="patching (loop)", disable=bar_disable(show), leave=False)):
        for i in range(n_pairs):
            patched = model.run(pair.base[i:i + 1], [_writer(c, source[c.site][i:i + 1])])
            out[k, i] = pair_scores(metric, patched.last_logits()[:, None], first=i)[0, 0]
    return out, base_logits


def _writer(c: Cell, source: torch.Tensor) -> Intervention:
    """The core intervention that writes cell ``c`` from one pair's source value ``[1, ...]`` (unpadded)."""
    if c.site.kind not in ATTENTION_MAP_SITES:
        heads = None if c.head is None else [c.head]
        neurons = None if c.neuron is None else [c.neuron]
        return Patch(c.site.name, source, positions=c.position, heads=heads, neurons=neurons)
    rows = slice(None) if c.position is None else c.position  # query rows of [1, heads, query, key]
    heads_at = slice(None) if c.head is None else c.head

    def write(value: torch.Tensor) -> torch.Tensor:
        out = value.clone()
        out[:, heads_at, rows] = source[:, heads_at, rows].to(out)
        return out
    return Edit(c.site.name, write)
