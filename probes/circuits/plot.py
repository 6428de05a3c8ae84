"""A circuit as a static figure (PNG, SVG, PDF) through :mod:`lmscope.probes.plotting`.

Nodes sit in forward order from left to right (``embed``, each layer's heads then its MLP, the logits) and are
stacked by head index (see :mod:`lmscope.probes.circuits.layout`). An edge's width grows with ``|score|``, its
colour gives the score's sign (red: patching the edge raises the metric, blue: lowers it; grey: no score) and
its line style the input it enters (q solid, k dashed, v dotted, MLP and logits solid).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from lmscope.probes.plotting import panels, save_figure

from .layout import circuit_nodes, drawn_edges, node_info, positions

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .circuit import Circuit
    from .layout import DrawnEdge

#: Edge colour by the sign of its score.
SIGN_COLOURS = {1: "#c0392b", -1: "#2471a3", 0: "#7f8c8d"}
#: Line style by the input an edge enters.
INPUT_STYLES = {"q": "solid", "k": "dashed", "v": "dotted", "mlp": "solid", "logits": "solid"}
#: Node fill by kind.
NODE_COLOURS = {"embed": "#f7dc6f", "head": "#d6eaf8", "mlp": "#d5f5e3", "logits": "#fadbd8"}


def sign(score: float) -> int:
    """1, -1, or 0 for a zero or missing (NaN) score."""
    return 0 if math.isnan(score) or score == 0 else (1 if score > 0 else -1)


def widths(edges: list[DrawnEdge], thinnest: float = 0.4, thickest: float = 4.0) -> list[float]:
    """Line widths from ``thinnest`` (score 0 or none) to ``thickest`` (the largest ``|score|``)."""
    finite = [abs(e.score) for e in edges if not math.isnan(e.score)]
    top = max(finite, default=0.0) or 1.0
    return [thinnest + (thickest - thinnest) * (0.0 if math.isnan(e.score) else abs(e.score) / top) for e in edges]


def column_label(kind: str, layer: int) -> str:
    """The x tick of a column: ``embed``, ``L3 attn``, ``L3 MLP``, ``logits``."""
    return {"embed": "embed", "logits": "logits", "head": f"L{layer} attn", "mlp": f"L{layer} MLP"}[kind]


def _draw_edges(ax: Axes, edges: list[DrawnEdge], pos: dict[str, tuple[float, float]]) -> None:
    for edge, width in zip(edges, widths(edges)):
        ax.annotate("", xy=pos[edge.dest], xytext=pos[edge.source],
                    arrowprops=dict(arrowstyle="-|>", lw=width, color=SIGN_COLOURS[sign(edge.score)],
                                    alpha=0.3 + 0.15 * width,
                                    linestyle=INPUT_STYLES[edge.input], connectionstyle="arc3,rad=0.12",
                                    shrinkA=9, shrinkB=9, mutation_scale=6 + 2 * width))


def _draw_nodes(ax: Axes, circuit: Circuit, pos: dict[str, tuple[float, float]], fontsize: float) -> None:
    for name, (x, y) in pos.items():
        kind = node_info(circuit.graph, name)["kind"]
        ax.text(x, y, name, ha="center", va="center", fontsize=fontsize, zorder=3,
                bbox=dict(boxstyle="round,pad=0.25", fc=NODE_COLOURS[kind], ec="#555555", lw=0.6))


def _legend(ax: Axes) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=SIGN_COLOURS[1], lw=2, label="score > 0"),
               Line2D([], [], color=SIGN_COLOURS[-1], lw=2, label="score < 0")]
    handles += [Line2D([], [], color="#555555", lw=1.2, ls=INPUT_STYLES[k], label=f"into {k}") for k in "kv"]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def plot_circuit(circuit: Circuit, path: str | os.PathLike[str] | None = None, *,
                 title: str | None = None) -> Figure:
    """Draw ``circuit`` (module docstring); with ``path``, write it atomically (the suffix picks the format)."""
    graph = circuit.graph
    edges = drawn_edges(graph, circuit.in_circuit, circuit.scores)
    pos = positions(graph, circuit_nodes(graph, edges))
    columns = sorted({x for x, _ in pos.values()})
    rows = max((sum(1 for p in pos.values() if p[0] == c) for c in columns), default=1)
    fig, (ax,) = panels(1, size=(min(40.0, 3.0 + 1.1 * len(columns)), min(30.0, 2.5 + 0.55 * rows)))
    fontsize = 8 if rows <= 24 else 6
    _draw_edges(ax, edges, pos)
    _draw_nodes(ax, circuit, pos, fontsize)
    infos = {n: node_info(graph, n) for n in pos}
    ticks = {x: column_label(infos[n]["kind"], infos[n]["layer"]) for n, (x, _) in pos.items()}
    ax.set_xticks(list(ticks), list(ticks.values()), rotation=45, ha="right", fontsize=7)
    ax.set_yticks([])
    ax.set_xlim(min(columns, default=0) - 0.7, max(columns, default=1) + 0.7)
    ax.set_ylim((rows + 1) / 2, -(rows + 1) / 2)  # head 0 on top, as in the HTML page
    for spine in ("top", "right", "left"):
        ax.spines[spine].set_visible(False)
    if not edges:
        ax.text(0.5, 0.5, "empty circuit", ha="center", va="center", transform=ax.transAxes)
    _legend(ax)
    ax.set_title(title or f"Circuit: {circuit.n_edges} edges, {len(pos)} nodes", fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig
