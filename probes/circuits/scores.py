"""``EdgeScores``: one score per edge and pair, from edge attribution or exact edge patching.

A score estimates (EAP, EAP-IG) or measures (exact) how the metric changes when that one edge carries the source
(corrupt or mean) value instead of the clean one: ``metric(edge patched) - metric(clean)``, per pair. The mean
over pairs and its standard error are over those per-pair effects (paired by construction). Edges a method did
not score (exact patching of a subset) are NaN.

Scores save to a folder (``edge_scores.json`` with the graph, method and info; ``tensors.safetensors`` with the
per-pair scores and metrics; never pickle) and load back bit for bit; :meth:`EdgeScores.circuit` picks a
:class:`~lmscope.probes.circuits.Circuit` from them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.artifacts import expect_tensor, load_artifact, save_artifact
from lmscope.interventions.errors import InputError

from .graph import EdgeGraph

if TYPE_CHECKING:
    from .circuit import Circuit

FORMAT = "lmscope.edge_scores"
CONFIG_NAME = "edge_scores.json"


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
        """``[n_targets, n_nodes]``: the standard error of the mean effect (0 for one pair; NaN for scores saved as
        their mean only, ``info["pairs_averaged"]``: the spread over the pairs is not kept)."""
        if "pairs_averaged" in self.info:
            return torch.full_like(self.mean, float("nan"))
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

    def circuit(self, k: int | None = None, threshold: float | None = None, prune: bool = True) -> Circuit:
        """The circuit of the ``k`` edges of largest ``|mean|`` or of those with ``|mean| >= threshold`` (give one);
        with ``prune``, only those on a path from the input to the logits (:mod:`~lmscope.probes.circuits.pruning`)."""
        from .circuit import Circuit

        return Circuit.from_scores(self, k=k, threshold=threshold, prune=prune)

    # -- persistence ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able: graph, method, info, per-pair metrics and each scored edge's mean and stderr (per-pair scores
        stay in :meth:`save`'s tensors)."""
        names, mean, err = self.graph.edge_names, self.edge_values("mean"), self.edge_values("stderr")
        scores = {names[i]: {"mean": float(mean[i]), "stderr": None if bool(err[i].isnan()) else float(err[i])}
                  for i in self.scored().nonzero()[:, 0].tolist()}
        return {"format": FORMAT, "graph": self.graph.to_dict(), "method": self.method, "info": self.info,
                "n_pairs": self.n_pairs, "clean_metric": self.clean_metric.tolist(),
                "corrupt_metric": self.corrupt_metric.tolist(), "gap": self.gap, "scores": scores}

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``edge_scores.json`` and ``tensors.safetensors`` (``per_pair``, ``clean_metric``,
        ``corrupt_metric`` as they are) into ``folder``, atomically; :meth:`load` reads them back exactly."""
        try:
            json.dumps(self.info)
        except (TypeError, ValueError) as err:
            raise InputError(f"EdgeScores.info must be JSON-able to be saved ({err}).") from None
        config = {"format": FORMAT, "graph": self.graph.to_dict(), "method": self.method, "info": self.info}
        tensors = {"per_pair": self.per_pair, "clean_metric": self.clean_metric,
                   "corrupt_metric": self.corrupt_metric}
        return save_artifact(folder, config, tensors, config_name=CONFIG_NAME)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> EdgeScores:
        """Read a folder written by :meth:`save` (tensors on the CPU, never unpickled)."""
        config, tensors = load_artifact(folder, config_name=CONFIG_NAME)
        if config.get("format") != FORMAT:
            raise InputError(f"{folder} does not hold edge scores (format {config.get('format')!r}).")
        graph = EdgeGraph.from_dict(config["graph"])
        first = tensors.get("clean_metric")
        n = int(first.shape[0]) if first is not None and first.dim() == 1 else 0
        clean = expect_tensor(tensors, "clean_metric", (n,), folder)
        per_pair = expect_tensor(tensors, "per_pair", (n, graph.n_targets, graph.n_nodes), folder)
        corrupt = expect_tensor(tensors, "corrupt_metric", (n,), folder)
        return cls(graph, per_pair, str(config["method"]), clean, corrupt, dict(config.get("info") or {}))
