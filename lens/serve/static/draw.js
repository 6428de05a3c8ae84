// lmscope workbench: SVG drawing helpers (heat maps, bars, colour scales, tooltips). No library.
"use strict";

const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.append(e);
  return e;
}

function svgRoot(width, height, cls) {
  const s = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: cls || "" });
  s.setAttribute("xmlns", NS);
  el("rect", { x: 0, y: 0, width, height, fill: "#ffffff" }, s);  // exported images get a background
  return s;
}

function label(parent, x, y, str, attrs) {
  const t = el("text", { x, y, ...(attrs || {}) }, parent);
  t.textContent = str;
  return t;
}

// colour scales: sequential white -> blue on [0, 1]; diverging blue - white - red on [-1, 1]
function seqColour(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "#dddddd";
  const a = Math.max(0, Math.min(1, v));
  return `rgb(${Math.round(255 - 200 * a)},${Math.round(255 - 150 * a)},255)`;
}
function warmColour(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "#dddddd";
  const a = Math.max(0, Math.min(1, v));
  return `rgb(255,${Math.round(255 - 120 * a)},${Math.round(255 - 230 * a)})`;
}
function divColour(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "#dddddd";
  const a = Math.max(-1, Math.min(1, v));
  if (a >= 0) return `rgb(255,${Math.round(255 - 200 * a)},${Math.round(255 - 200 * a)})`;
  return `rgb(${Math.round(255 + 200 * a)},${Math.round(255 + 120 * a)},255)`;
}
function maxAbs(values) {
  let m = 0;
  for (const v of values.flat(3)) if (v !== null && Number.isFinite(v)) m = Math.max(m, Math.abs(v));
  return m || 1;
}

function showTip(ev, lines) {
  const tip = document.getElementById("tooltip");
  tip.textContent = lines.join("\n");
  tip.hidden = false;
  tip.style.left = ev.clientX + 14 + "px";
  tip.style.top = ev.clientY + 14 + "px";
}
function hideTip() { document.getElementById("tooltip").hidden = true; }

// A heat map: rows x cols cells. opts: rows, cols (label arrays), value(r, c) and colour(v), or fill(r, c); text(r, c)
// (optional cell text), cell [w, h], onClick(r, c), tip(r, c) -> lines, data(r, c) -> dataset entries, cellClass(r, c),
// title.
function heatmap(opts) {
  const [cw, ch] = opts.cell || [14, 14];
  const left = 8 + 6.2 * Math.max(2, ...opts.rows.map((s) => s.length));
  const top = (opts.title ? 18 : 0) + 8 + 4.5 * Math.min(24, Math.max(2, ...opts.cols.map((s) => s.length)));
  const W = Math.max(left + cw * opts.cols.length + 10, opts.title ? 12 + 6.8 * opts.title.length : 0);
  const H = top + ch * opts.rows.length + 6;
  const s = svgRoot(W, H, "heatmap " + (opts.cls || ""));
  if (opts.title) label(s, 4, 13, opts.title, { class: "title" });
  opts.cols.forEach((c, j) => {
    const x = left + cw * j + cw / 2, y = top - 4;
    label(s, x, y, c.slice(0, 24), { transform: `rotate(-50 ${x} ${y})`, class: "axis" });
  });
  opts.rows.forEach((r, i) => label(s, left - 4, top + ch * i + ch * 0.72, r, { "text-anchor": "end", class: "axis" }));
  for (let i = 0; i < opts.rows.length; i++) {
    for (let j = 0; j < opts.cols.length; j++) {
      const fill = opts.fill ? opts.fill(i, j) : opts.colour(opts.value(i, j));
      const g = el("g", { class: "cell " + (opts.cellClass ? opts.cellClass(i, j) : "") }, s);
      g.dataset.row = String(i);
      g.dataset.col = String(j);
      el("rect", { x: left + cw * j, y: top + ch * i, width: cw - 1, height: ch - 1, fill }, g);
      const t = opts.text ? opts.text(i, j) : null;
      if (t !== null && t !== undefined) {
        label(g, left + cw * j + 2, top + ch * i + ch * 0.7, t, { class: "celltext" });
      }
      if (opts.data) for (const [k, val] of Object.entries(opts.data(i, j))) g.dataset[k] = String(val);
      if (opts.onClick) g.addEventListener("click", () => opts.onClick(i, j));
      if (opts.tip) {
        g.addEventListener("mousemove", (ev) => showTip(ev, opts.tip(i, j)));
        g.addEventListener("mouseleave", hideTip);
      }
    }
  }
  return s;
}

// Horizontal bars, one per row (value may be negative): opts.rows, opts.values, opts.onClick(i), opts.title.
function bars(opts) {
  const left = 8 + 6.2 * Math.max(...opts.rows.map((s) => s.length)), width = 260, bh = opts.barHeight || 12;
  const top = opts.title ? 22 : 6;
  const W = Math.max(left + width + 70, opts.title ? 12 + 6.8 * opts.title.length : 0);
  const s = svgRoot(W, top + bh * opts.rows.length + 8, "bars");
  if (opts.title) label(s, 4, 14, opts.title, { class: "title" });
  const m = maxAbs(opts.values), mid = left + width / 2;
  el("line", { x1: mid, x2: mid, y1: top - 2, y2: top + bh * opts.rows.length, stroke: "#999" }, s);
  opts.rows.forEach((r, i) => {
    const v = opts.values[i], w = v === null ? 0 : (Math.abs(v) / m) * (width / 2);
    const g = el("g", { class: "bar" }, s);
    g.dataset.row = r;
    label(g, left - 4, top + bh * i + bh * 0.75, r, { "text-anchor": "end", class: "axis" });
    el("rect", { x: v >= 0 ? mid : mid - w, y: top + bh * i + 1, width: Math.max(w, 0.5), height: bh - 2,
      fill: v >= 0 ? "#d62728" : "#1f77b4" }, g);
    label(g, left + width + 4, top + bh * i + bh * 0.75, v === null ? "—" : v.toFixed(3), { class: "axis" });
    if (opts.onClick) g.addEventListener("click", () => opts.onClick(i));
  });
  return s;
}

// A picture of a matrix (canvas -> PNG data URL) inside an SVG <image>: small multiples of long prompts stay light.
function matrixImage(values, colour, size) {
  const n = values.length, m = values[0] ? values[0].length : 0;
  const canvas = document.createElement("canvas");
  canvas.width = m; canvas.height = n;
  const ctx = canvas.getContext("2d");
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < m; j++) { ctx.fillStyle = colour(values[i][j]); ctx.fillRect(j, i, 1, 1); }
  }
  const img = el("image", { width: size, height: size, preserveAspectRatio: "none" });
  img.setAttribute("href", canvas.toDataURL("image/png"));
  img.setAttribute("style", "image-rendering: pixelated");
  return img;
}
