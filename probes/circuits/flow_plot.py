"""Drawing information flow routes: tokens on x, layers on y, each kept edge a line whose width is its importance.

``.png``/``.pdf``/``.svg`` go through matplotlib (:mod:`lmscope.probes.plotting` lays out and writes the figure
atomically); ``.html`` is one self-contained page (inline SVG and script, no network) with a threshold slider
that re-prunes the routes in the browser exactly as :func:`~lmscope.probes.circuits.flow.flow_routes` does: the
edges of importance >= the slider's value reachable from the top node. The slider runs from the graph's own
threshold up to 1: the page holds the routes at that threshold, which contain those at any higher one.

Layout: the stream entering layer ``L`` sits at height ``L`` (``L = n_layers``: the stream leaving the model),
the stream after attention at ``L + 0.5``, an MLP output at ``L + 0.75`` (``L + 0.5`` on parallel blocks),
shifted right of its token by a quarter so the MLP detour is visible beside the residual edge.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmscope.interventions.artifacts import atomic_write_text
from lmscope.interventions.errors import InputError

if TYPE_CHECKING:
    from .flow import FlowGraph, Node

RASTER = (".png", ".pdf", ".svg")
#: Edge colour by kind (matplotlib and the page use the same).
COLORS = {"attn": "#1f77b4", "resid": "#7f7f7f", "mlp": "#ff7f0e"}
MAX_WIDTH = 6.0


def node_xy(node: Node, parallel: bool) -> tuple[float, float]:
    """Where ``node`` is drawn: x the token position, y the layer (see the module docstring)."""
    if node.kind == "resid":
        return float(node.position), float(node.layer)
    if node.kind == "mid":
        return float(node.position), node.layer + 0.5
    return node.position + 0.25, node.layer + (0.5 if parallel else 0.75)


def token_labels(graph: FlowGraph) -> list[str]:
    from lmscope.lens.plot import visible_token

    labels = [visible_token(t) for t in graph.tokens[: graph.position + 1]]
    return [f"{i}:{t if len(t) <= 10 else t[:9] + '…'}" for i, t in enumerate(labels)]


def _title(graph: FlowGraph, title: str | None) -> str:
    return title or (f"Information flow routes to position {graph.position} "
                     f"({graph.tokens[graph.position]!r}), threshold {graph.threshold:g}")


def plot_flow(graph: FlowGraph, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write ``graph`` to ``path``; the suffix picks the format (see the module docstring)."""
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix == ".html":
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, flow_html(graph, title))
        return out
    if suffix not in RASTER:
        raise InputError(f"Cannot plot flow routes to {out.name!r}: use a .png, .pdf, .svg or .html file.")
    from lmscope.probes.plotting import save_figure

    return save_figure(flow_figure(graph, title), out)


def flow_figure(graph: FlowGraph, title: str | None = None) -> Any:
    """The matplotlib figure of ``graph`` (closed from pyplot; the caller owns it)."""
    from matplotlib.lines import Line2D

    from lmscope.probes.plotting import panels

    n_pos, n_layers = graph.position + 1, graph.n_layers
    fig, (ax,) = panels(1, size=(min(40.0, 2.5 + 1.0 * n_pos), min(40.0, 1.5 + 0.55 * (n_layers + 1))))
    for edge in sorted(graph.edges, key=lambda e: e.importance):
        (x0, y0), (x1, y1) = node_xy(edge.source, graph.parallel), node_xy(edge.target, graph.parallel)
        ax.plot([x0, x1], [y0, y1], color=COLORS[edge.kind], lw=0.3 + MAX_WIDTH * edge.importance,
                alpha=0.35 + 0.6 * edge.importance, solid_capstyle="round", zorder=1)
    for node in graph.nodes:
        x, y = node_xy(node, graph.parallel)
        marker = "s" if node.kind == "mlp" else "o"
        ax.scatter([x], [y], s=40 if node == graph.top else 12, marker=marker, zorder=2,
                   color="#d62728" if node == graph.top else "black")
    ax.set_xticks(range(n_pos), token_labels(graph), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_layers + 1), [f"L{i}" for i in range(n_layers)] + ["out"], fontsize=8)
    ax.set_xlim(-0.6, n_pos - 0.4)
    ax.set_ylim(-0.4, n_layers + 0.4)
    ax.set_xlabel("token")
    ax.set_ylabel("layer (stream entering it)")
    ax.grid(alpha=0.2)
    ax.legend([Line2D([], [], color=c, lw=2) for c in COLORS.values()], list(COLORS), fontsize=8, loc="lower left")
    ax.set_title(_title(graph, title), fontsize=10)
    return fig


def page_data(graph: FlowGraph) -> dict[str, Any]:
    """What the page draws: nodes with coordinates, edges as node indices, the top node and the axes."""
    index = {node: i for i, node in enumerate(graph.nodes)}
    nodes = [{"x": x, "y": y, "label": f"{n.kind} L{n.layer} pos {n.position}"}
             for n in graph.nodes for x, y in [node_xy(n, graph.parallel)]]
    edges = [{"s": index[e.source], "t": index[e.target], "w": e.importance, "kind": e.kind} for e in graph.edges]
    return {"nodes": nodes, "edges": edges, "top": index[graph.top], "threshold": graph.threshold,
            "tokens": token_labels(graph), "n_layers": graph.n_layers, "colors": COLORS, "max_width": MAX_WIDTH}


#: The page's pruning (a pure function, also run by the tests under node): the indices of the edges of importance
#: >= ``t`` reachable from the top node, and of the nodes they reach.
ROUTES_JS = """
function routes(D, t) {
  const into = D.nodes.map(() => []);
  D.edges.forEach((e, k) => into[e.t].push(k));
  const seen = new Set([D.top]), stack = [D.top], kept = new Set();
  while (stack.length) {
    for (const k of into[stack.pop()]) {
      if (D.edges[k].w < t) continue;
      kept.add(k);
      const s = D.edges[k].s;
      if (!seen.has(s)) { seen.add(s); stack.push(s); }
    }
  }
  return [kept, seen];
}
"""

_SCRIPT = ROUTES_JS + """
const D = JSON.parse(document.getElementById('flow-data').textContent);
const NS = 'http://www.w3.org/2000/svg', sx = 90, sy = 60, ox = 70, oy = 30;
const svg = document.getElementById('flow');
const H = oy * 2 + sy * D.n_layers + 60;
svg.setAttribute('width', ox * 2 + sx * Math.max(1, D.tokens.length));
svg.setAttribute('height', H);
const X = x => ox + sx * x, Y = y => H - 90 - sy * y;
function el(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
D.tokens.forEach((t, i) => svg.appendChild(el('text', {x: X(i), y: H - 60, 'text-anchor': 'end', 'font-size': 11,
  transform: `rotate(-40 ${X(i)} ${H - 60})`}, t)));
for (let l = 0; l <= D.n_layers; l++) svg.appendChild(el('text', {x: 8, y: Y(l) + 4, 'font-size': 11},
  l < D.n_layers ? 'L' + l : 'out'));
const lines = D.edges.map(e => {
  const s = D.nodes[e.s], t = D.nodes[e.t];
  const line = el('line', {x1: X(s.x), y1: Y(s.y), x2: X(t.x), y2: Y(t.y), stroke: D.colors[e.kind],
    'stroke-width': 0.3 + D.max_width * e.w, 'stroke-linecap': 'round', opacity: 0.35 + 0.6 * e.w});
  line.appendChild(el('title', {}, `${e.kind}: ${s.label} -> ${t.label}, importance ${e.w.toFixed(3)}`));
  return svg.appendChild(line);
});
const dots = D.nodes.map((n, i) => {
  const dot = el('circle', {cx: X(n.x), cy: Y(n.y), r: i === D.top ? 5 : 3, fill: i === D.top ? '#d62728' : 'black'});
  dot.appendChild(el('title', {}, n.label));
  return svg.appendChild(dot);
});
function prune(t) {
  const [kept, seen] = routes(D, t);
  lines.forEach((line, k) => line.style.display = kept.has(k) ? '' : 'none');
  dots.forEach((dot, i) => dot.style.display = seen.has(i) ? '' : 'none');
  document.getElementById('value').textContent = `${t.toFixed(3)} (${kept.size} edges, ${seen.size} nodes)`;
}
const slider = document.getElementById('threshold');
slider.min = D.threshold; slider.value = D.threshold;
slider.addEventListener('input', () => prune(parseFloat(slider.value)));
prune(D.threshold);
"""


def flow_html(graph: FlowGraph, title: str | None = None) -> str:
    """One self-contained HTML page of ``graph`` with a threshold slider (inline SVG and script, no network)."""
    data = json.dumps(page_data(graph)).replace("</", "<\\/")
    heading = html.escape(_title(graph, title))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{heading}</title></head>\n"
            f"<body style=\"font-family: sans-serif\">\n<h3>{heading}</h3>\n"
            "<label>threshold <input id=\"threshold\" type=\"range\" max=\"1\" step=\"0.005\"></label> "
            "<span id=\"value\"></span>\n<div style=\"overflow:auto\"><svg id=\"flow\"></svg></div>\n"
            f"<script type=\"application/json\" id=\"flow-data\">{data}</script>\n<script>{_SCRIPT}</script>\n"
            "</body></html>\n")
