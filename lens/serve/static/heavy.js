// lmscope workbench, heavy views (server jobs with progress, cached per request, cancellable): exact patching maps
// of a clean/corrupt pair, its edge-level circuit (EAP-IG), and the information-flow routes of one prompt.
"use strict";

WB.jobs = {};  // kind -> { id, key }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Submit (or find) a job and poll it until it is finished; a different request of the same kind cancels the old one.
async function runJob(kind, path, body, ui, seq) {
  const key = JSON.stringify([path, body]);
  const old = WB.jobs[kind];
  if (old && old.key !== key && !old.finished) api(`/api/v1/jobs/${old.id}`, null, "DELETE").catch(() => {});
  let j = await api(path, body);
  const mine = { id: j.job, key, finished: false };
  WB.jobs[kind] = mine;
  while (j.state === "queued" || j.state === "running") {
    $(ui + "-progress").value = j.progress;
    $(ui + "-state").textContent = `${j.state}: ${j.message} (${Math.round(100 * j.progress)}%)`;
    await sleep(250);
    if (seq !== WB.seq) return null;  // superseded: the newer render decides whether to cancel
    j = await api(`/api/v1/jobs/${j.job}`);
  }
  mine.finished = true;
  $(ui + "-progress").value = j.progress;
  $(ui + "-state").textContent = `${j.state}${j.cached ? " (cached)" : ""} · ${j.seconds.toFixed(1)} s`;
  $(ui + "-state").dataset.state = j.state;
  if (j.state !== "done") throw new Error(`${kind}: ${j.error || j.message}`);
  return j;
}

async function pairBody() {
  if (!$("pair").checked || !$("corrupt").value) {
    throw new Error("this view needs a clean/corrupt pair: tick 'clean/corrupt pair' and give a corrupt prompt " +
      "(or press 'IOI pair')");
  }
  const prompt = promptOf("prompt");
  const body = { prompt, corrupt: promptOf("corrupt"), target: await targetOrTop(prompt) };
  const d = tokenOf("contrast");
  if (d !== null) body.distractor = d;
  return withInterventions(body);
}

function readingOf(layer) { return layer > 0 ? `resid_post.${layer - 1}` : 0; }

function patchMaps(r) {
  const cols = r.tokens.map((t, i) => `${i}:${visible(t)}`);
  const res = r.resid_pre, heads = r.heads;
  const resid = heatmap({
    title: `resid_pre × position (0 = corrupt run, 1 = clean: metric ${res.base_metric.toFixed(2)} → ` +
      `${res.source_metric.toFixed(2)})`, rows: res.rows, cols, cell: [30, 12], cls: "patchmap",
    value: (i, j) => res.normalized[i][j], colour: divColour,
    data: (i, j) => ({ layer: i, pos: j, value: res.values[i][j] }),
    tip: (i, j) => [`${res.rows[i]} @ ${cols[j]}`, `metric ${res.values[i][j].toFixed(3)}, normalised ` +
      `${res.normalized[i][j] === null ? "—" : res.normalized[i][j].toFixed(3)}`],
    onClick: (i, j) => { select({ layer: i, pos: j, kind: "cell" }); showCell($("lens").value, readingOf(i), j); },
  });
  const H = heads.by_head[0].length, m = maxAbs(heads.by_head_normalized);
  const hm = heatmap({
    title: `each head's output, every position (normalised, ±${m.toFixed(2)})`, rows: heads.by_head.map((_, l) => `L${l}`),
    cols: Array.from({ length: H }, (_, h) => `H${h}`), cell: [22, 12], cls: "patchheads",
    value: (l, h) => (heads.by_head_normalized[l][h] === null ? null : heads.by_head_normalized[l][h] / m), colour: divColour,
    data: (l, h) => ({ layer: l, head: h, value: heads.by_head[l][h] }),
    tip: (l, h) => [`L${l}H${h}: metric ${heads.by_head[l][h].toFixed(3)}, normalised ` +
      `${heads.by_head_normalized[l][h] === null ? "—" : heads.by_head_normalized[l][h].toFixed(3)}`],
    onClick: (l, h) => { select({ layer: l, head: h, kind: "head" }); showHead(l, h); },
  });
  return [resid, hm];
}

WB.views.patching = {
  async render(seq) {
    const j = await runJob("patching", "/api/v1/patching", await pairBody(), "patch", seq);
    if (!j || seq !== WB.seq) return;
    WB.answers.patching = j;
    showActive(j.result.active);
    const [a, b] = patchMaps(j.result);
    $("patch-resid").replaceChildren(a);
    $("patch-heads").replaceChildren(b);
  },
  svgs: () => [...document.querySelectorAll("#patch-resid svg, #patch-heads svg")],
};

// -- the graph view: the pair's edge-level circuit, or one prompt's flow routes ---------------------------------
// Nodes on a grid: x by layer (the embedding left, the logits right), y by head, each layer's MLP in the bottom row.
function nodeAt(n, r, dx, dy, left, top) {
  const x = { embed: 0, logits: r.n_layers + 1 }[n.kind] ?? n.layer + 1;
  const y = n.kind === "head" ? n.head : n.kind === "mlp" ? r.n_heads : (r.n_heads - 1) / 2;
  return [left + x * dx, top + y * dy];
}

function circuitSvg(r, frac) {
  const dx = Math.max(30, Math.min(64, 1150 / (r.n_layers + 2))), dy = 24, left = 40, top = 46;
  const pos = {};
  for (const n of r.nodes) pos[n.name] = nodeAt(n, r, dx, dy, left, top);
  const s = svgRoot(left * 2 + (r.n_layers + 1) * dx, top + (r.n_heads + 1) * dy + 10, "circuit");
  const max = maxAbs(r.edges.map((e) => e.score)), cut = frac * max;
  label(s, 4, 14, `${r.method} circuit: top ${r.edges.length} edge lines, shown |score| ≥ ${cut.toPrecision(3)} ` +
    `(metric: clean ${r.clean_metric.toFixed(2)}, corrupt ${r.corrupt_metric.toFixed(2)}; red raises it)`, { class: "title" });
  for (let l = 0; l < r.n_layers; l += Math.max(1, Math.round(r.n_layers / 15))) {
    label(s, left + (l + 1) * dx, top - 18, `L${l}`, { class: "axis", "text-anchor": "middle" });
  }
  label(s, 4, top + r.n_heads * dy + 3, "MLP", { class: "axis" });
  const used = new Set();
  for (const e of r.edges) {
    if (e.score === null || Math.abs(e.score) < cut) continue;
    used.add(e.source); used.add(e.dest);
    const [x1, y1] = pos[e.source], [x2, y2] = pos[e.dest], mx = (x1 + x2) / 2;
    const p = el("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, fill: "none", class: "edge",
      stroke: e.score >= 0 ? "#d62728" : "#1f77b4", "stroke-width": 0.6 + 4 * Math.abs(e.score) / max,
      "stroke-opacity": 0.35 + 0.5 * Math.abs(e.score) / max }, s);
    p.dataset.name = e.name;
    p.addEventListener("mousemove", (ev) => showTip(ev, [`${e.name} (${e.input})`, `score ${e.score.toFixed(4)}`]));
    p.addEventListener("mouseleave", hideTip);
  }
  for (const n of r.nodes) {
    const [x, y] = pos[n.name], on = used.has(n.name);
    const g = el("g", { class: `node ${n.kind}` + (on ? "" : " faded") }, s);
    g.dataset.name = n.name;
    if (n.kind === "mlp") el("rect", { x: x - 6, y: y - 6, width: 12, height: 12 }, g);
    else el("circle", { cx: x, cy: y, r: n.kind === "head" ? 5 : 7 }, g);
    if (on) label(g, x + 6, y - 7, n.name, { class: "small" });
    g.addEventListener("mousemove", (ev) => showTip(ev, [n.name, "click: drill down"]));
    g.addEventListener("mouseleave", hideTip);
    g.addEventListener("click", () => nodeDetail(n, r));
  }
  return s;
}

function nodeDetail(n, r) {
  const lens = $("lens").value;
  if (n.kind === "head") { select({ layer: n.layer, head: n.head, kind: "head" }); showHead(n.layer, n.head); }
  else if (n.kind === "mlp") { select({ layer: n.layer, head: null, kind: "mlp" }); showMlp(n.layer); }
  else if (n.kind === "embed") { select({ layer: 0, kind: "cell" }); showCell(lens, 0, -1); }
  else { select({ layer: r.n_layers - 1, kind: "cell" }); showCell(lens, -1, -1); }
}

function flowSvg(r, frac) {
  const T = r.position + 1, dx = Math.max(40, Math.min(80, 900 / T)), dy = Math.max(8, Math.min(16, 520 / (r.n_layers + 1)));
  const left = 40, bottom = 60, H = bottom + (r.n_layers + 1) * dy + 30;
  const at = ([layer, p, kind]) => [left + p * dx + (kind === "mlp" ? dx * 0.4 : 0),
    H - bottom - (layer + (kind === "resid" ? 0 : 0.5)) * dy];
  const s = svgRoot(left * 2 + T * dx, H, "flow");
  const cut = Math.max(r.threshold, frac);
  label(s, 4, 14, `information flow routes to position ${r.position}, importance ≥ ${cut.toFixed(2)}`, { class: "title" });
  r.tokens.slice(0, T).forEach((t, p) => label(s, left + p * dx, H - bottom + 16, visible(t).slice(0, 10), { class: "axis" }));
  for (const e of r.edges) {
    if (e.importance < cut) continue;
    const [x1, y1] = at(e.source), [x2, y2] = at(e.target);
    el("line", { x1, y1, x2, y2, class: "edge " + e.kind, "stroke-width": 0.5 + 5 * e.importance,
      stroke: { attn: "#2ca02c", resid: "#7f7f7f", mlp: "#ff7f0e" }[e.kind] }, s);
  }
  for (const n of r.nodes) {
    const [x, y] = at(n);
    const g = el("g", { class: "node " + n[2] }, s);
    g.dataset.name = n.join(".");
    el("circle", { cx: x, cy: y, r: 3 }, g);
    const reading = n[2] === "resid" ? readingOf(n[0]) : `resid_post.${n[0]}`;
    g.addEventListener("click", () => { select({ layer: n[0], pos: n[1], kind: "cell" }); showCell($("lens").value, reading, n[1]); });
  }
  return s;
}

function drawGraph() {
  const j = WB.answers.graph;
  if (!j) return;
  const frac = Number($("threshold").value);
  $("threshold-value").textContent = frac.toFixed(2);
  $("graph-svg").replaceChildren(j.kind === "flow" ? flowSvg(j.result, frac) : circuitSvg(j.result, frac));
}

WB.views.graph = {
  async render(seq) {
    let j;
    if ($("graph-mode").value === "flow") {
      const body = withInterventions({ prompt: promptOf("prompt"), threshold: 0.04 });
      j = await runJob("graph", "/api/v1/flow", body, "graph", seq);
    } else {
      j = await runJob("graph", "/api/v1/graph", { ...(await pairBody()), edges: 200 }, "graph", seq);
    }
    if (!j || seq !== WB.seq) return;
    WB.answers.graph = j;
    showActive(j.result.active);
    drawGraph();
  },
  svgs: () => [...document.querySelectorAll("#graph-svg svg")],
};
