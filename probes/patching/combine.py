"""A dataset of pairs as one :class:`PatchingResult`: the mean map, every pair's map and every pair's own base and
source metrics (from which the result derives its paired standard errors).

Pairs may differ in token length, so a dataset's columns are token indices as the caller gave them
(negative ones count from each prompt's end), not one prompt's token labels.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .pairs import Positions
from .result import PatchingResult


def dataset_col_labels(positions: Positions, cols: list[int | None], lengths: set[int]) -> list[str]:
    """Column labels of a dataset sweep: token indices (as given when the pairs differ in length), or ``all``."""
    if positions == "all":
        return ["all"]
    if len(lengths) == 1 or positions is None:
        return [str(p) for p in cols]
    assert isinstance(positions, Sequence)
    return [str(p) for p in positions]


def dataset_result(per_pair: list[torch.Tensor], row_labels: list[str], col_labels: list[str],
                   base: torch.Tensor, source: torch.Tensor, method: str, direction: str,
                   metric_name: str) -> PatchingResult:
    """Measured maps (``[rows, cols]`` each) and the pairs' unpatched metrics ``[n]`` into one dataset result."""
    stacked = torch.stack(per_pair)
    return PatchingResult(stacked.mean(0), row_labels, col_labels, float(base.mean()), float(source.mean()),
                          method, direction, metric_name, per_pair=stacked,
                          pair_base_metrics=base.tolist(), pair_source_metrics=source.tolist())


#: Extras that say how far a cell is from the linear regime: over pairs the largest, so that one pair far outside
#: it is flagged, not averaged away by the others.
WORST_OVER_PAIRS = ("relative_delta", "relative_change")


def combine_maps(results: list[PatchingResult], positions: Positions, lengths: set[int]) -> PatchingResult:
    """Attribution maps of single pairs into one dataset result (mean, per pair, the pairs' metrics; the
    :data:`WORST_OVER_PAIRS` extras their largest over the pairs, the others their mean)."""
    first = results[0]
    stacked = torch.stack([r.values for r in results])
    extras = {k: (torch.stack([r.extras[k] for r in results]).amax(0) if k in WORST_OVER_PAIRS
                  else torch.stack([r.extras[k] for r in results]).mean(0)) for k in first.extras}
    notes = list(dict.fromkeys(n for r in results for n in r.notes))
    base = [r.base_metric for r in results]
    source = [r.source_metric for r in results]
    cols = [None if c == "all" else int(c.split(":")[0]) for c in first.col_labels]
    return PatchingResult(stacked.mean(0), first.row_labels, dataset_col_labels(positions, cols, lengths),
                          sum(base) / len(base), sum(source) / len(source), first.method, first.direction,
                          first.metric_name, extras, notes, per_pair=stacked,
                          pair_base_metrics=base, pair_source_metrics=source)
