"""The reference sweep: one full forward per cell and pair with the core ``Patch`` intervention.

Slow and simple on purpose: it shares no batching or cache reuse with the exact engine
(:mod:`.exact`), so comparing the two checks the engine, and it is what the sweep falls back to where
partial forwards are not exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from lmscope.interventions.patch import Patch
from lmscope.interventions.sites import Site

from .metrics import Metric
from .pairs import Cell, Pair
from .scoring import pair_scores

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


def loop_values(model: HookedModel, pair: Pair, cells: list[Cell], source: dict[Site, torch.Tensor],
                metric: Metric | Sequence[Metric], progress: bool | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: one full forward per cell and pair with the core ``Patch`` intervention (a head cell
    patches only that head, ``Patch(..., heads=[h])``). Returns ``[cells, n]`` and the base logits ``[n, vocab]``."""
    from tqdm.auto import tqdm

    n_pairs = pair.base.shape[0]
    base_logits = model.run(pair.base).last_logits()
    out = torch.empty(len(cells), n_pairs)
    show = len(cells) * n_pairs > 32 if progress is None else progress
    for k, c in enumerate(tqdm(cells, desc="patching (loop)", disable=not show, leave=False)):
        for i in range(n_pairs):
            heads = None if c.head is None else [c.head]
            patch = Patch(c.site.name, source[c.site][i:i + 1], positions=c.position, heads=heads)
            patched = model.run(pair.base[i:i + 1], [patch])
            out[k, i] = pair_scores(metric, patched.last_logits()[:, None], first=i)[0, 0]
    return out, base_logits
