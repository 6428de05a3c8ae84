// lmscope workbench, attention view: one layer's heads as small multiples, one head large (query x key with the
// tokens), pre-softmax scores as an alternative, and each head's previous-token / duplicate-token / induction scores.
"use strict";

const SCORE_KINDS = [["previous-token", "prev"], ["duplicate-token", "dup"], ["induction", "ind"]];

function fmt(v, digits) { return v === null || v === undefined ? "—" : v.toFixed(digits === undefined ? 2 : digits); }

// The matrix a head shows: probabilities as they are, pre-softmax scores min-max scaled per query row (masked: null).
function shown(a, h) {
  if (!a.scores) return a.pattern[h];
  return a.scores[h].map((row) => {
    const vals = row.filter((v) => v !== null);
    const lo = Math.min(...vals), hi = Math.max(...vals);
    return row.map((v) => (v === null ? null : (v - lo) / (hi - lo || 1)));
  });
}

function headGrid(a, layer) {
  const size = 112, pad = 34, per = Math.min(a.n_heads, 4);
  const rows = Math.ceil(a.n_heads / per);
  const s = svgRoot(per * (size + 12) + 8, rows * (size + pad) + 20, "heads");
  label(s, 4, 13, `layer ${layer}: ${a.scores ? "pre-softmax scores (row-scaled)" : "attention patterns"}`,
    { class: "title" });
  const ablated = parseHeads($("ablate").value).filter(([l]) => l === layer).map(([, h]) => h);
  for (let h = 0; h < a.n_heads; h++) {
    const x = 6 + (h % per) * (size + 12), y = 22 + Math.floor(h / per) * (size + pad);
    const g = el("g", { class: "head" + (ablated.includes(h) ? " ablated" : "") + (WB.sel.head === h ? " locked" : ""),
      transform: `translate(${x},${y})` }, s);
    g.dataset.head = String(h);
    const img = matrixImage(shown(a, h), seqColour, size);
    g.append(img);
    el("rect", { x: 0, y: 0, width: size, height: size, fill: "none", class: "frame" }, g);
    const sc = a.head_scores;
    label(g, 0, size + 12, `H${h}` + (ablated.includes(h) ? " (ablated)" : ""), { class: "axis" });
    label(g, 0, size + 24, `prev ${fmt(sc["previous-token"][h])} dup ${fmt(sc["duplicate-token"][h])} ` +
      `ind ${fmt(a.repeated_scores.induction[h])}`, { class: "axis small" });
    g.addEventListener("mouseenter", () => { if (WB.sel.head === null || WB.sel.kind !== "head") bigHead(a, h); });
    g.addEventListener("click", () => {
      select({ layer, head: h, kind: "head" });
      s.querySelectorAll("g.head").forEach((o) => o.classList.toggle("locked", o === g));
      bigHead(a, h);
      showHead(layer, h);
    });
  }
  return s;
}

function bigHead(a, h) {
  const toks = a.tokens.map(visible);
  const m = shown(a, h);
  const raw = a.scores ? a.scores[h] : a.pattern[h];
  const svg = heatmap({
    title: `L${a.layer}H${h} ${a.scores ? "pre-softmax scores" : "pattern"} (query ↓ × key →)`,
    rows: toks.map((t, i) => `${i}:${t}`.slice(0, 16)), cols: toks.map((t, i) => `${i}:${t}`.slice(0, 16)),
    cell: [Math.max(8, Math.min(22, 420 / toks.length)), Math.max(8, Math.min(22, 420 / toks.length))],
    value: (i, j) => m[i][j], colour: seqColour, cls: "bighead",
    data: (i, j) => ({ q: i, k: j }),
    tip: (i, j) => [`query ${i} ${toks[i]} → key ${j} ${toks[j]}`, `${a.scores ? "score" : "attention"} ` +
      `${raw[i][j] === null ? "masked" : raw[i][j].toFixed(4)}`],
  });
  svg.dataset.head = String(h);
  $("att-big").replaceChildren(svg);
}

function scoreTable(a, layer) {
  const t = document.createElement("table");
  t.className = "scores";
  const head = t.insertRow();
  for (const h of ["head", "prev (prompt)", "dup (prompt)", "ind (prompt)", "prev (repeated)", "ind (repeated)"]) {
    const th = document.createElement("th");
    th.textContent = h;
    head.append(th);
  }
  for (let h = 0; h < a.n_heads; h++) {
    const row = t.insertRow();
    row.dataset.head = String(h);
    const cells = [`L${layer}H${h}`, ...SCORE_KINDS.map(([k]) => fmt(a.head_scores[k][h], 3)),
      fmt(a.repeated_scores["previous-token"][h], 3), fmt(a.repeated_scores.induction[h], 3)];
    for (const c of cells) row.insertCell().textContent = c;
    row.addEventListener("click", () => toggleAblation(layer, h));
  }
  const p = document.createElement("p");
  p.className = "hint";
  p.textContent = "prompt: scores on this prompt (— where no token repeats); repeated: on repeated random tokens " +
    "(TransformerLens's induction test). Click a row to toggle that head's ablation.";
  const box = document.createElement("div");
  box.append(t, p);
  return box;
}

function attentionLayer() {
  const sel = $("att-layer");
  if (sel.value === "" && WB.sel.layer !== null) sel.value = String(WB.sel.layer);
  return Number(sel.value || 0);
}

WB.views.attention = {
  async render(seq) {
    const layer = attentionLayer();
    const a = await api("/api/v1/attention", withInterventions({ prompt: promptOf("prompt"), layer,
      scores: $("att-scores").checked }));
    if (seq !== WB.seq) return;
    WB.answers.attention = a;
    showActive(a.active);
    $("att-grid").replaceChildren(headGrid(a, layer));
    const locked = WB.sel.kind === "head" && WB.sel.layer === layer && WB.sel.head !== null;
    bigHead(a, locked ? WB.sel.head : 0);
    $("att-table").replaceChildren(scoreTable(a, layer));
  },
  svgs: () => [...document.querySelectorAll("#att-grid svg, #att-big svg")],
};
