"""``EdgeScores``: one score per edge and pair, from edge attribution or exact edge patching.

A score estimates (EAP, EAP-IG) or measures (exact) how the metric changes when that one edge carries the source
(corrupt or mean) value instead of the clean one: ``metric(edge patched) - metric(clean)``, per pair. The mean
over pairs and its standard error are over those per-pair effects (paired by construction). Edges a method did
not score (exact patching of a subset) are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmscope.interventions.errors import InputError

from .graph import EdgeGraph


@dataclass
class EdgeScores:
    """``per_pair [pairs, n_targets, n_nodes]`` (NaN off the edges and where unscored), the method that made it,
    and each pair's clean and corrupt metric (``[pairs]``)."""

    graph: EdgeGraph
    per_pair: torch.Tensor
    method: str
    clean_metric: torch.Tensor
    corrupt_metric: torch.Tensor
    info: dict[str, Any]

    @property
    def n_pairs(self) -> int:
        return int(self.per_pair.shape[0])

    @property
    def mean(self) -> torch.Tensor:
        """``[n_targets, n_nodes]``: the mean effect over pairs."""
        return self.per_pair.mean(0)

    @property
    def stderr(self) -> torch.Tensor:
        """``[n_targets, n_nodes]``: the standard error of the mean effect (0 for one pair)."""
        if self.n_pairs < 2:
            return torch.zeros_like(self.mean)
        return self.per_pair.std(0, unbiased=True) / self.n_pairs ** 0.5

    @property
    def gap(self) -> float:
        """Mean ``metric(corrupt) - metric(clean)``: the effect of dropping every edge."""
        return float((self.corrupt_metric - self.clean_metric).mean())

    def scored(self) -> torch.Tensor:
        """``[n_edges]`` bool over :attr:`EdgeGraph.edge_index`: the edges that have a score."""
        t, u = self.graph.edge_index.unbind(1)
        return ~self.mean[t, u].isnan()

    def edge_values(self, which: str = "mean") -> torch.Tensor:
        """``[n_edges]`` of ``mean``, ``stderr`` or ``abs`` (|mean|) in :attr:`EdgeGraph.edge_index` order."""
        table = {"mean": self.mean, "stderr": self.stderr, "abs": self.mean.abs()}
        if which not in table:
            raise InputError(f"which must be one of {', '.join(table)}, got {which!r}.")
        t, u = self.graph.edge_index.unbind(1)
        return table[which][t, u]

    def top(self, k: int = 10) -> list[tuple[str, float, float]]:
        """The ``k`` edges of largest ``|mean|``: ``(name, mean, stderr)``, largest first (unscored edges skipped)."""
        values = self.edge_values("abs").nan_to_num(-1.0)
        order = values.argsort(descending=True)[: max(0, int(k))]
        mean, err = self.edge_values("mean"), self.edge_values("stderr")
        names = self.graph.edge_names
        return [(names[i], float(mean[i]), float(err[i])) for i in order.tolist() if values[i] >= 0]
