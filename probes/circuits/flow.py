"""Information flow routes (Ferrando & Voita 2024, arXiv 2403.00824; the graph the LLM Transparency Tool draws).

From one forward over one prompt, every update of the residual stream is split exactly into parts (the residual
itself, what attention moves from each source position, the output bias, the MLP output: see
:mod:`lmscope.probes.circuits.flow_parts`), each part gets an importance (its L1 proximity to the sum it joins,
normalised over that sum), and the graph keeps the edges of importance >= ``threshold`` reachable top-down from
the prediction: the stream leaving the last layer at ``position``::

    from lmscope.probes.circuits import flow_routes

    graph = flow_routes(model, "The capital of France is", threshold=0.04)
    graph.edges                # Edge(source, target, importance, kind), each >= 0.04
    graph.components(11, -1)   # every part's importance at layer 11, last token, kept or not
    graph.plot("routes.png")   # tokens on x, layers on y, edge width by importance (".html": threshold slider)

Nodes are :class:`Node` ``(layer, position, kind)``, the LLM Transparency Tool's layout:

- ``"resid"``: the stream *entering* layer ``layer`` (``resid_pre``; layer 0 is the embedding, layer
  ``n_layers`` the stream leaving the last layer, whose node at ``position`` is the top);
- ``"mid"``: the stream after the attention, before the MLP (``resid_mid``; sequential blocks only);
- ``"mlp"``: the MLP's output at that layer and position.

Edges (kind: source -> target):

- ``"attn"``: ``(L, j, resid) -> (L, i, mid)``, what attention moves from ``j`` into ``i`` (every head summed);
- ``"resid"``: ``(L, i, resid) -> (L, i, mid)`` and ``(L, i, mid) -> (L+1, i, resid)``, the residual part;
- ``"mlp"``: ``(L, i, mid) -> (L, i, mlp) -> (L+1, i, resid)``, both carrying the MLP part's importance.

On parallel blocks (GPT-NeoX, GPT-J, Falcon, Cohere) there is no ``mid``: attention, residual and MLP parts all
join one sum, so their edges go straight into ``(L+1, i, resid)`` and the MLP reads ``(L, i, resid)``. The output
projection's bias is a part of its own: it takes its share of the normalisation but has no source, so it is
never an edge (``components`` reports it). Unlike the LLM Transparency Tool, an attention edge's importance is
that of the heads' *summed* contribution from one source position (not the sum of per-head importances), and an
attention edge and a residual edge between the same two nodes stay two edges.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.sites import UNAVAILABLE_WHY

from .flow_parts import Sum, flow_sites, layer_parts, layer_sums

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

#: Site kinds flow routes read that some architectures lack.
NEEDED_KINDS = ("attn_pattern", "v", "head_z")


class Node(NamedTuple):
    """A point of the residual stream (``"resid"``, ``"mid"``) or an MLP output (``"mlp"``)."""

    layer: int
    position: int
    kind: str


class Edge(NamedTuple):
    """``source`` contributes to ``target`` with ``importance`` in [0, 1]; ``kind`` is "attn", "resid" or "mlp"."""

    source: Node
    target: Node
    importance: float
    kind: str


class Component(NamedTuple):
    """One part of a sum: its name ("resid", "attn", "bias", "mlp"), the node it comes from (None for the bias),
    its importance and its raw proximity to the sum."""

    name: str
    source: Node | None
    importance: float
    proximity: float


@dataclass(frozen=True)
class FlowGraph:
    """The routes to one prediction: the kept ``edges`` and the ``nodes`` they reach (see the module docstring).

    ``sums[L]`` holds layer ``L``'s sums (:class:`~lmscope.probes.circuits.flow_parts.Sum`) at positions
    ``0..position``, from which :meth:`components` reads every part's importance, kept or not.
    """

    tokens: tuple[str, ...]
    position: int
    threshold: float
    parallel: bool
    sums: tuple[tuple[Sum, ...], ...]
    edges: tuple[Edge, ...]
    nodes: tuple[Node, ...]

    @property
    def n_layers(self) -> int:
        return len(self.sums)

    @property
    def top(self) -> Node:
        """The prediction's node: the stream leaving the last layer at ``position``."""
        return Node(self.n_layers, self.position, "resid")

    def components(self, layer: int, position: int) -> dict[Node, list[Component]]:
        """Every part of layer ``layer``'s sums at ``position`` (negative: from the end of the routed positions),
        keyed by the node each sum is: ``(layer, position, "mid")`` and ``(layer + 1, position, "resid")``
        on a sequential block, only the latter on a parallel one. Importances add to 1 in each sum (0 in a
        degenerate one); attention parts are listed for every source position ``0..position``."""
        if not -self.n_layers <= layer < self.n_layers:
            raise InputError(f"layer {layer} is out of range: this model has {self.n_layers} layers "
                             f"(0..{self.n_layers - 1}, or negative from the end).")
        n = self.position + 1
        if not -n <= position < n:
            raise InputError(f"position {position} is out of range: the routes cover positions 0..{n - 1} "
                             f"(the routed position {self.position} and those before it; negative from the end).")
        layer, position = layer % self.n_layers, position % n
        return {_sum_node(s, layer, position): _parts(s, layer, position, self.parallel)
                for s in self.sums[layer]}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record: tokens, position, threshold, the kept nodes and edges (nodes as
        ``[layer, position, kind]``)."""
        return {"method": "information flow routes (Ferrando & Voita 2024)", "tokens": list(self.tokens),
                "position": self.position, "threshold": self.threshold, "n_layers": self.n_layers,
                "parallel": self.parallel, "top": list(self.top), "nodes": [list(n) for n in self.nodes],
                "edges": [{"source": list(e.source), "target": list(e.target), "importance": e.importance,
                           "kind": e.kind} for e in self.edges]}

    def plot(self, path: str | os.PathLike[str], title: str | None = None) -> Path:
        """Write the graph to ``path``: ``.png``/``.pdf``/``.svg`` (matplotlib) or ``.html`` (self-contained, a
        threshold slider, no network): tokens on x, layers on y, edge width by importance."""
        from .flow_plot import plot_flow

        return plot_flow(self, path, title)


def _sum_node(s: Sum, layer: int, position: int) -> Node:
    return Node(layer, position, "mid") if s.target == "mid" else Node(layer + 1, position, "resid")


def _sources(s: Sum, layer: int, position: int, parallel: bool) -> dict[str, Node | None]:
    """The node each named part of sum ``s`` at ``(layer, position)`` comes from (attention: see :func:`_parts`)."""
    inner = "resid" if parallel or s.target == "mid" else "mid"
    return {"resid": Node(layer, position, inner), "mlp": Node(layer, position, "mlp"), "bias": None}


def _parts(s: Sum, layer: int, position: int, parallel: bool) -> list[Component]:
    sources = _sources(s, layer, position, parallel)
    scale = float(s.proximity[position])
    out = []
    for name, imp in s.importance.items():
        if name == "attn":
            row = imp[position, : position + 1].tolist()
            out += [Component("attn", Node(layer, j, "resid"), w, w * scale) for j, w in enumerate(row)]
        else:
            w = float(imp[position])
            out.append(Component(name, sources[name], w, w * scale))
    return out


def _incoming(graph: FlowGraph, node: Node) -> list[Edge]:
    """Every edge into ``node`` with its importance, kept or not."""
    layer, pos, kind = node
    if kind == "mlp":  # the MLP reads one stream node whole; the edge carries the MLP part's importance
        src = Node(layer, pos, "resid" if graph.parallel else "mid")
        return [Edge(src, node, float(graph.sums[layer][-1].importance["mlp"][pos]), "mlp")]
    if kind == "resid" and layer == 0:
        return []  # the embedding
    at = layer if kind == "mid" else layer - 1  # the layer whose sum this node is
    s = graph.sums[at][0] if kind == "mid" else graph.sums[at][-1]
    return [Edge(c.source, node, c.importance, c.name) for c in _parts(s, at, pos, graph.parallel)
            if c.source is not None]


def _routes(graph: FlowGraph) -> tuple[tuple[Edge, ...], tuple[Node, ...]]:
    """Edges of importance >= threshold reachable top-down from the top node, and the nodes they reach."""
    seen, stack, edges = {graph.top}, [graph.top], []
    while stack:
        node = stack.pop()
        for edge in _incoming(graph, node):
            if edge.importance >= graph.threshold:
                edges.append(edge)
                if edge.source not in seen:
                    seen.add(edge.source)
                    stack.append(edge.source)
    order = {"resid": 0, "mid": 1, "mlp": 2}
    key = (lambda n: (n.layer, order[n.kind], n.position))
    return (tuple(sorted(edges, key=lambda e: (key(e.target), key(e.source), e.kind))),
            tuple(sorted(seen, key=key)))


def _check_args(model: HookedModel, threshold: float) -> None:
    missing = [k for k in NEEDED_KINDS if k not in model.available_kinds]
    if missing:
        why = " ".join(dict.fromkeys(UNAVAILABLE_WHY.get(k, "") for k in missing))
        raise InputError(f"flow_routes needs the sites {', '.join(NEEDED_KINDS)}; this model lacks "
                         f"{', '.join(missing)}. {why}".strip())
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise InputError(f"threshold must be a number strictly between 0 and 1 (an importance), got {threshold!r}.")


def _tokens(model: HookedModel, ids: list[int]) -> tuple[str, ...]:
    tok = model.tokenizer
    return tuple(tok.decode([i]) if tok is not None else f"#{i}" for i in ids)


def flow_routes(model: HookedModel, prompt: Any, *, threshold: float = 0.04, position: int = -1) -> FlowGraph:
    """The information flow routes to the prediction at ``position`` of one ``prompt`` (a string or token ids).

    One forward (eager attention, which the ``attn_pattern`` site switches on) records the stream, the attention
    patterns, values and outputs; every layer's sums are decomposed exactly and their parts' importances
    computed for positions ``0..position``; the graph keeps the edges of importance >= ``threshold`` (in (0, 1))
    reachable from the top node. See the module docstring for the nodes, edges and the bias.
    """
    _check_args(model, threshold)
    batch = model.tokenize(prompt)
    if batch.input_ids.shape[0] != 1:
        raise InputError(f"flow_routes reads one prompt; got {batch.input_ids.shape[0]}. Pass a string or the "
                         "token ids of one prompt.")
    n_tokens = int(batch.input_ids.shape[1])
    if isinstance(position, bool) or not isinstance(position, Integral) or not -n_tokens <= position < n_tokens:
        raise InputError(f"position must be an integer in {-n_tokens}..{n_tokens - 1} (the prompt has {n_tokens} "
                         f"tokens), got {position!r}.")
    position = int(position) % n_tokens
    cache = Cache(flow_sites(model))
    model.run(batch, [cache])
    sums = tuple(layer_sums(layer_parts(model, cache, layer, position + 1)) for layer in range(model.n_layers))
    graph = FlowGraph(tokens=_tokens(model, batch.input_ids[0].tolist()), position=position,
                      threshold=float(threshold), parallel=model.arch.parallel_residual(model.hf_model.config),
                      sums=sums, edges=(), nodes=())
    edges, nodes = _routes(graph)
    return replace(graph, edges=edges, nodes=nodes)


