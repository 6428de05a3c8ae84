"""Where a circuit's nodes and edges go when it is drawn (PNG/SVG, HTML) or exported (networkx).

A circuit edge ``u -> t`` is drawn from node ``u`` to the node(s) its target ``t`` feeds: a query target to its
head, an MLP target to its MLP, ``logits`` to the ``logits`` sink, and a k/v target (shared by the heads of a
KV group on a grouped-query model) to the heads of its group that the circuit uses: those that some circuit
edge leaves, or every head of the group when none does.

Columns (x) follow the forward: ``embed``, then each layer's heads and its MLP, then the logits; only the columns
the circuit uses are drawn, side by side (a circuit of a 30-layer model that skips layers 1-16 leaves no blank
band; the axis labels and node names say the layers). Within a column (y) the circuit's nodes are stacked by head
index, centred on 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .graph import EdgeGraph
from .pruning import fed_nodes

LOGITS = "logits"


@dataclass(frozen=True)
class DrawnEdge:
    """One circuit edge as drawn: its name, the nodes it joins, the input it enters (``q``, ``k``, ``v``,
    ``mlp``, ``logits``) and its score (NaN when the circuit has none)."""

    name: str
    source: str
    dest: str
    input: str
    score: float


def node_info(graph: EdgeGraph, name: str) -> dict[str, Any]:
    """``{"kind": "embed"|"head"|"mlp"|"logits", "layer": int, "head": int | None}`` (embed: layer -1; logits:
    layer ``n_layers``)."""
    if name == "embed":
        return {"kind": "embed", "layer": -1, "head": None}
    if name == LOGITS:
        return {"kind": "logits", "layer": graph.n_layers, "head": None}
    if name.startswith("M"):
        return {"kind": "mlp", "layer": int(name[1:]), "head": None}
    layer, head = (int(x) for x in name[1:].split("."))
    return {"kind": "head", "layer": layer, "head": head}


def target_input(graph: EdgeGraph, target: int) -> str:
    """The input a target is: ``q``, ``k``, ``v``, ``mlp`` or ``logits``."""
    if target == graph.logits_target:
        return LOGITS
    name = graph.targets[target]
    return name.rsplit(".", 1)[1] if name.startswith("A") else "mlp"


def drawn_edges(graph: EdgeGraph, in_circuit: torch.Tensor, scores: torch.Tensor | None) -> list[DrawnEdge]:
    """Every circuit edge as one line per node it reaches (module docstring), in edge order."""
    pairs = in_circuit.nonzero().tolist()
    senders = {u for _, u in pairs}
    fed = fed_nodes(graph)
    out = []
    for t, u in pairs:
        dests = [w for w in fed[t] if w in senders] or list(fed[t])
        names = [graph.nodes[w] for w in dests] or [LOGITS]
        score = float(scores[t, u]) if scores is not None else math.nan
        for dest in names:
            out.append(DrawnEdge(graph.edge_name(t, u), graph.nodes[u], dest, target_input(graph, t), score))
    return out


def circuit_nodes(graph: EdgeGraph, edges: list[DrawnEdge]) -> list[str]:
    """The nodes the drawn edges join, in forward order (``logits`` last)."""
    used = {e.source for e in edges} | {e.dest for e in edges}
    return [n for n in graph.nodes if n in used] + ([LOGITS] if LOGITS in used else [])


def positions(graph: EdgeGraph, nodes: list[str]) -> dict[str, tuple[float, float]]:
    """``node -> (x, y)``: the used columns in forward order, rows stacked by head index (module docstring)."""
    columns: dict[int, list[str]] = {}
    for name in nodes:
        info = node_info(graph, name)
        column = {"embed": 0, "logits": 2 * graph.n_layers + 1, "head": 2 * info["layer"] + 1,
                  "mlp": 2 * info["layer"] + 2}[info["kind"]]
        columns.setdefault(column, []).append(name)
    out = {}
    for x, column in enumerate(sorted(columns)):  # the used columns, side by side
        names = columns[column]
        for rank, name in enumerate(names):  # nodes arrive in forward order: heads by index
            out[name] = (float(x), rank - (len(names) - 1) / 2)
    return out
