"""``Circuit``: a set of edges of an :class:`EdgeGraph`, usually the top edges of :class:`EdgeScores`.

A circuit is a bool ``[n_targets, n_nodes]`` mask of the edges *in* it (False off the graph's edges), the edge
scores it was chosen by (or none) and a record of how it was built. :meth:`Circuit.mask` is the
:class:`~lmscope.probes.circuits.EdgePatch` mask that runs it: circuit edges carry the forward's own (clean)
value, every other edge the source (corrupt or mean) value. Built from scores with
``scores.circuit(k=...)`` / ``scores.circuit(threshold=...)``, pruned by default to the edges on a path from the
input to the logits (the rule is stated in :mod:`lmscope.probes.circuits.pruning`).

Saved as a folder (``circuit.json`` + ``tensors.safetensors``, no pickle); exported as a dict, a networkx graph,
a PNG/SVG figure or a self-contained interactive HTML page.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch

from lmscope.interventions.artifacts import load_artifact, save_artifact
from lmscope.interventions.errors import InputError

from .graph import EdgeGraph
from .layout import circuit_nodes, drawn_edges, node_info
from .pruning import check_edges, prune

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .scores import EdgeScores

FORMAT = "lmscope.circuit"
CONFIG_NAME = "circuit.json"


def whole_number(value: Any, name: str, minimum: int = 0) -> int:
    """``value`` if it is an int ``>= minimum`` (not a bool), else an :class:`InputError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


@dataclass
class Circuit:
    """The edges ``in_circuit`` (bool ``[n_targets, n_nodes]``) of ``graph``; ``scores`` (``[n_targets, n_nodes]``
    float, NaN where unscored) are the mean edge scores it was chosen by, or None; ``info`` says how it was built."""

    graph: EdgeGraph
    in_circuit: torch.Tensor
    scores: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.in_circuit = check_edges(self.graph, self.in_circuit, "A circuit's edge mask")
        if self.scores is not None:
            shape = (self.graph.n_targets, self.graph.n_nodes)
            if not isinstance(self.scores, torch.Tensor) or tuple(self.scores.shape) != shape:
                raise InputError(f"A circuit's scores are a float tensor of shape {list(shape)} (targets x nodes).")
            self.scores = self.scores.detach().float().cpu()

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_edges(cls, graph: EdgeGraph, edges: Iterable[Any], *, scores: torch.Tensor | None = None,
                   prune: bool = False) -> Circuit:
        """The circuit of the given edges (names like ``"A3.1->M5"`` or ``(target, node)`` pairs)."""
        circuit = cls(graph, ~graph.mask(edges, keep=False), scores, {"source": "edges"})
        return circuit.pruned() if prune else circuit

    @classmethod
    def from_scores(cls, scores: EdgeScores, k: int | None = None, threshold: float | None = None,
                    prune: bool = True) -> Circuit:
        """The ``k`` edges of largest ``|mean score|`` (ties: the earlier edge), or those with ``|mean| >=
        threshold``; then, with ``prune``, only those on a path from the input to the logits."""
        values = scores.edge_values("abs")
        scored = int((~values.isnan()).sum())
        if (k is None) == (threshold is None):
            raise InputError("Give exactly one of k= (the number of top edges) and threshold= (a minimum |score|).")
        if k is not None:
            k = whole_number(k, "k")
            if k > scored:
                raise InputError(f"k={k} is more edges than have a score ({scored} of {scores.graph.n_edges}).")
            chosen = values.nan_to_num(-1.0).argsort(descending=True, stable=True)[:k]
        else:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
                raise InputError(f"threshold must be a number >= 0 (a minimum |mean score|), got {threshold!r}.")
            chosen = (values >= threshold).nonzero()[:, 0]
        t, u = scores.graph.edge_index[chosen].unbind(1)
        in_circuit = torch.zeros(scores.graph.n_targets, scores.graph.n_nodes, dtype=torch.bool)
        in_circuit[t, u] = True
        info = {"source": "scores", "method": scores.method, "k": k, "threshold": threshold,
                "candidates": int(chosen.numel())}
        circuit = cls(scores.graph, in_circuit, scores.mean, info)
        return circuit.pruned() if prune else circuit

    @classmethod
    def random(cls, graph: EdgeGraph, n_edges: int, seed: int | Sequence[int] = 0) -> Circuit:
        """``n_edges`` edges drawn uniformly without replacement from the whole graph; the same ``seed`` (an int
        or a sequence of ints) always draws the same edges. Not pruned."""
        n_edges = whole_number(n_edges, "n_edges")
        if n_edges > graph.n_edges:
            raise InputError(f"n_edges={n_edges} is more than the graph's {graph.n_edges} edges.")
        entropy = [whole_number(s, "seed") for s in ([seed] if isinstance(seed, (int, np.integer)) else seed)]
        state = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        chosen = torch.randperm(graph.n_edges, generator=torch.Generator().manual_seed(state))[:n_edges]
        t, u = graph.edge_index[chosen].unbind(1)
        in_circuit = torch.zeros(graph.n_targets, graph.n_nodes, dtype=torch.bool)
        in_circuit[t, u] = True
        return cls(graph, in_circuit, None, {"source": "random", "seed": entropy})

    def pruned(self) -> Circuit:
        """This circuit with only the edges on a path from the input to the logits."""
        info = {**self.info, "pruned": True}
        return Circuit(self.graph, prune(self.graph, self.in_circuit), self.scores, info)

    # -- contents -------------------------------------------------------------------------------------------------
    @property
    def edges(self) -> list[str]:
        """The circuit's edge names (``"A3.1->M5"``), in :attr:`EdgeGraph.edge_index` order."""
        return [self.graph.edge_name(t, u) for t, u in self.in_circuit.nonzero().tolist()]

    @property
    def n_edges(self) -> int:
        return int(self.in_circuit.sum())

    def nodes(self) -> list[str]:
        """The nodes the circuit's edges join, in forward order, ``"logits"`` last: every node an edge leaves and
        every node an edge's target feeds (a k/v target: the heads of its KV group that some circuit edge leaves,
        or the whole group when none does)."""
        return circuit_nodes(self.graph, drawn_edges(self.graph, self.in_circuit, None))

    def mask(self) -> torch.Tensor:
        """The :class:`EdgePatch` mask that runs this circuit: True on its edges (and off the graph's edges, where
        entries mean nothing), False on every other edge."""
        return self.in_circuit | ~self.graph.valid

    def edge_scores(self) -> dict[str, float]:
        """``edge name -> mean score`` (NaN where unscored or without scores), in edge order."""
        t, u = self.in_circuit.nonzero().unbind(1)
        values = self.scores[t, u].tolist() if self.scores is not None else [math.nan] * int(t.numel())
        return dict(zip(self.edges, values))

    def __repr__(self) -> str:
        return f"Circuit({self.n_edges} edges, {len(self.nodes())} nodes, {self.info.get('source', '?')})"

    # -- persistence ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the graph, the edges with their scores (None where unscored) and ``info``."""
        scores = {name: (None if math.isnan(s) else s) for name, s in self.edge_scores().items()}
        return {"format": FORMAT, "graph": self.graph.to_dict(), "edges": self.edges, "n_edges": self.n_edges,
                "scores": scores if self.scores is not None else None, "info": self.info}

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``circuit.json`` (graph, info) and ``tensors.safetensors`` (the edge mask and the scores) into
        ``folder``, atomically."""
        tensors = {"in_circuit": self.in_circuit}
        if self.scores is not None:
            tensors["scores"] = self.scores
        config = {"format": FORMAT, "graph": self.graph.to_dict(), "info": self.info}
        return save_artifact(folder, config, tensors, config_name=CONFIG_NAME)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Circuit:
        """Read a folder written by :meth:`save`."""
        config, tensors = load_artifact(folder, config_name=CONFIG_NAME)
        if config.get("format") != FORMAT or "in_circuit" not in tensors:
            raise InputError(f"{folder} does not hold a circuit (format {config.get('format')!r}).")
        return cls(EdgeGraph.from_dict(config["graph"]), tensors["in_circuit"], tensors.get("scores"),
                   config.get("info", {}))

    # -- views ----------------------------------------------------------------------------------------------------
    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph`` of the circuit's nodes (attributes ``kind``, ``layer``, ``head``) and one edge per
        pair of joined nodes (attributes ``edges``: the circuit edges it stands for, ``inputs``: the q/k/v/mlp/
        logits inputs they enter, ``score``: the sum of their scores, NaN without scores). A k/v edge appears on
        the edge to every head of its group that the circuit uses (see :meth:`nodes`)."""
        try:
            nx = importlib.import_module("networkx")
        except ImportError:
            raise InputError("Circuit.to_networkx needs networkx: pip install networkx") from None
        out = nx.DiGraph(**self.graph.to_dict(), n_edges=self.n_edges)
        drawn = drawn_edges(self.graph, self.in_circuit, self.scores)
        for name in circuit_nodes(self.graph, drawn):
            out.add_node(name, **node_info(self.graph, name))
        for e in drawn:
            if not out.has_edge(e.source, e.dest):
                out.add_edge(e.source, e.dest, edges=[], inputs=[], score=0.0)
            data = out.edges[e.source, e.dest]
            data["edges"].append(e.name)
            data["inputs"].append(e.input)
            data["score"] += e.score
        return out

    def plot(self, path: str | os.PathLike[str] | None = None, *, title: str | None = None) -> Figure | Path:
        """Draw the circuit: a matplotlib figure (written to ``path`` when given: ``.png``, ``.svg``, ``.pdf``), or
        with an ``.html`` path the interactive page of :meth:`to_html` (returns the path)."""
        if path is not None and Path(path).suffix.lower() == ".html":
            return self.to_html(path, title=title)
        from .plot import plot_circuit

        return plot_circuit(self, path, title=title)

    def to_html(self, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
        """Write a self-contained interactive page (inline SVG and script, nothing fetched): a |score| threshold
        slider, the edge name and score on hover, a click on a node highlights its edges."""
        from .interactive import write_html

        return write_html(self, path, title=title)
