"""A circuit as a self-contained interactive HTML page: an inline SVG and a small inline script, nothing fetched
(no CDN, no network, no external reference), so it opens offline and can be mailed as one file.

The page lays the circuit out as the static figure does (:mod:`lmscope.probes.circuits.layout`: forward order
left to right, heads stacked by index; width by ``|score|``, colour by sign, line style by input). A slider
hides the edges below a ``|score|`` threshold; hovering an edge shows its name and score; clicking a node
highlights its edges and dims the rest (click it again, or the background, to clear). Every edge element carries
its name and score (``data-name``, ``data-score``) and a ``<title>`` tooltip.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lmscope.interventions.artifacts import atomic_write_text

from .layout import DrawnEdge, circuit_nodes, drawn_edges, node_info, positions
from .plot import INPUT_STYLES, NODE_COLOURS, SIGN_COLOURS, sign, widths

if TYPE_CHECKING:
    from .circuit import Circuit

COLUMN_PX, ROW_PX, MARGIN_PX = 110, 34, 50
DASHES = {"solid": "", "dashed": "6 4", "dotted": "2 3"}

STYLE = """body{font:13px sans-serif;margin:12px;color:#222}#bar{margin-bottom:6px}#info{min-height:1.4em;color:#444}
g.e{opacity:.75;cursor:pointer}g.e:hover,g.e.hl{opacity:1}g.e.dim{opacity:.08}g.e path{fill:none}
g.e path.hit{stroke:transparent;stroke-width:9px;pointer-events:stroke}g.e path.line{pointer-events:none}
g.n{cursor:pointer}g.n rect{stroke:#555;stroke-width:.8}
g.n.sel rect{stroke:#000;stroke-width:2.5}g.n text{font-size:11px;text-anchor:middle;dominant-baseline:central}"""

SCRIPT = """(function(){
var edges=[].slice.call(document.querySelectorAll('g.e')),nodes=[].slice.call(document.querySelectorAll('g.n'));
var slider=document.getElementById('thr'),shown=document.getElementById('shown'),info=document.getElementById('info');
var help=info.textContent,selected=null;
function update(){var t=parseFloat(slider.value),names={},n=0;
 edges.forEach(function(e){var on=parseFloat(e.getAttribute('data-abs'))>=t;e.style.display=on?'':'none';
  if(on&&!names[e.getAttribute('data-name')]){names[e.getAttribute('data-name')]=1;n++;}});
 shown.textContent='|score| >= '+t.toPrecision(3)+': '+n+' edges';}
function select(node){selected=(selected===node)?null:node;
 edges.forEach(function(e){var mine=selected!==null&&(e.getAttribute('data-from')===selected||
  e.getAttribute('data-to')===selected);e.classList.toggle('hl',mine);e.classList.toggle('dim',selected!==null&&!mine);});
 nodes.forEach(function(g){g.classList.toggle('sel',g.getAttribute('data-node')===selected);});
 info.textContent=selected===null?help:selected+': its edges highlighted (click again to clear)';}
edges.forEach(function(e){e.addEventListener('mouseenter',function(){
 info.textContent=e.getAttribute('data-name')+'   score '+e.getAttribute('data-score');});});
nodes.forEach(function(g){g.addEventListener('click',function(ev){ev.stopPropagation();
 select(g.getAttribute('data-node'));});});
document.getElementById('circuit').addEventListener('click',function(){if(selected!==null)select(selected);});
slider.addEventListener('input',update);update();})();"""


def _attr(value: object) -> str:
    return html.escape(str(value), quote=True)


def _score_text(score: float) -> str:
    return "none" if math.isnan(score) else f"{score:.4g}"


def _edge_svg(edge: DrawnEdge, width: float, a: tuple[float, float], b: tuple[float, float]) -> str:
    """One edge: a gently curved line (and a wider invisible twin that catches the pointer), its data attributes
    and a tooltip."""
    (x1, y1), (x2, y2) = a, b
    cx, cy = (x1 + x2) / 2 - 0.12 * (y2 - y1), (y1 + y2) / 2 + 0.12 * (x2 - x1)
    d = f"M{x1:.1f},{y1:.1f} Q{cx:.1f},{cy:.1f} {x2:.1f},{y2:.1f}"
    dash = DASHES[INPUT_STYLES[edge.input]]
    score = _score_text(edge.score)
    return (f'<g class="e" data-name="{_attr(edge.name)}" data-score="{score}" '
            f'data-abs="{0.0 if math.isnan(edge.score) else abs(edge.score):.6g}" data-from="{_attr(edge.source)}" '
            f'data-to="{_attr(edge.dest)}" data-input="{edge.input}"><title>{_attr(edge.name)}: {score}</title>'
            f'<path class="hit" d="{d}"/><path class="line" d="{d}" stroke="{SIGN_COLOURS[sign(edge.score)]}" '
            f'stroke-width="{max(1.2, width):.2f}"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/></g>")


def _node_svg(name: str, kind: str, x: float, y: float, n_edges: int) -> str:
    w = 12 + 7 * len(name)
    return (f'<g class="n" data-node="{_attr(name)}" transform="translate({x:.1f},{y:.1f})">'
            f'<rect x="{-w / 2:.1f}" y="-10" width="{w}" height="20" rx="5" fill="{NODE_COLOURS[kind]}"/>'
            f'<text>{_attr(name)}</text><title>{_attr(name)} ({kind}): {n_edges} edge lines</title></g>')


def circuit_svg(circuit: Circuit) -> str:
    """The circuit as an inline ``<svg>`` element (no namespace URL: HTML5 inline SVG needs none)."""
    graph = circuit.graph
    edges = drawn_edges(graph, circuit.in_circuit, circuit.scores)
    pos = positions(graph, circuit_nodes(graph, edges))
    columns = sorted({x for x, _ in pos.values()}) or [0.0]
    rows = max((sum(1 for p in pos.values() if p[0] == c) for c in columns), default=1)
    width = int(2 * MARGIN_PX + COLUMN_PX * (columns[-1] - columns[0]))
    height = int(2 * MARGIN_PX + ROW_PX * rows)
    px = {n: (MARGIN_PX + COLUMN_PX * (x - columns[0]), height / 2 + ROW_PX * y) for n, (x, y) in pos.items()}
    parts = [f'<svg id="circuit" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    parts += [_edge_svg(e, w, px[e.source], px[e.dest]) for e, w in zip(edges, widths(edges))]
    counts = {n: sum(1 for e in edges if n in (e.source, e.dest)) for n in pos}
    parts += [_node_svg(n, node_info(graph, n)["kind"], *px[n], counts[n]) for n in pos]
    return "\n".join(parts + ["</svg>"])


def write_html(circuit: Circuit, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Write the interactive page for ``circuit`` to ``path`` atomically (module docstring); returns the path."""
    scores = [abs(s) for s in circuit.edge_scores().values() if not math.isnan(s)]
    top = max(scores, default=0.0)
    heading = title or f"Circuit: {circuit.n_edges} edges, {len(circuit.nodes())} nodes"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_attr(heading)}</title><style>{STYLE}</style></head>
<body><h3>{_attr(heading)}</h3>
<div id="bar"><label>minimum |score| <input type="range" id="thr" min="0" max="{top:.6g}" step="{top / 200 or 1:.6g}"
value="0"{'' if scores else ' disabled'}></label> <span id="shown"></span></div>
<div id="info">Hover an edge for its name and score; click a node to highlight its edges.</div>
{circuit_svg(circuit)}
<script>{SCRIPT}</script></body></html>
"""
    out = Path(path)
    atomic_write_text(out, page)
    return out
