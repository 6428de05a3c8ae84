// lmscope workbench: shared state, the URL, the API, interventions, export. Plain DOM, no library, no network
// beyond this server's /api/v1.
"use strict";

const $ = (id) => document.getElementById(id);
const WB = {
  info: null,
  view: "lens",
  sel: { layer: null, head: null, pos: null, lens: null, kind: null },  // the linked selection
  views: {},  // name -> { render(seq), svgs(), data }
  answers: {},  // view -> the answer(s) it drew (exported as JSON)
  seq: 0,
  timer: null,
};
const token = new URLSearchParams(location.search).get("token") || "";

// Whitespace and control characters drawn visibly (a top token " " must not be a blank cell).
function visible(tok) {
  if (tok === "") return "∅";
  let out = "";
  for (const ch of tok) {
    const c = ch.codePointAt(0);
    if (ch === " ") out += "␣";
    else if (ch === "\n") out += "↵";
    else if (ch === "\t") out += "⇥";
    else if (ch === "\r") out += "␍";
    else if (c < 0x20) out += String.fromCodePoint(0x2400 + c);
    else if (c === 0x7f) out += "␡";
    else if (c === 0xa0) out += "⍽";
    else if ((c >= 0x80 && c < 0xa0) || c === 0x200b || c === 0xfeff || c === 0xfffd)
      out += "\\u" + c.toString(16).padStart(4, "0");
    else out += ch;
  }
  return out;
}

// A prompt box: text, or a JSON list of token ids ("[5, 17, 3]").
function promptOf(id) {
  const v = $(id).value;
  if (/^\s*\[[\d,\s]*\]\s*$/.test(v)) return JSON.parse(v);
  return v;
}

// A token box: ␣ stands for a space; an integer is a token id; blank is null.
function tokenOf(id) {
  const t = $(id).value.replace(/␣/g, " ");
  if (t.trim() === "") return null;
  if (/^\d+$/.test(t.trim())) return Number(t.trim());
  return t;
}

async function api(path, body, method) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers["Authorization"] = "Bearer " + token;
  const init = { method: method || (body ? "POST" : "GET"), headers };
  if (body) init.body = JSON.stringify(body);
  const resp = await fetch(path, init);
  const data = await resp.json();
  if (!resp.ok) {
    const d = data.detail;
    throw new Error(typeof d === "string" ? d : (d || []).map((e) => e.loc.slice(1).join(".") + ": " + e.msg).join("; "));
  }
  return data;
}

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// -- interventions ---------------------------------------------------------------------------------------------
function parseHeads(text) {
  const out = [];
  for (const item of text.split(/[,;\s]+/).filter((s) => s)) {
    const m = /^(-?\d+)[.:hH](-?\d+)$/.exec(item);
    if (!m) throw new Error(`ablate: ${JSON.stringify(item)} is not layer.head (e.g. 9.3)`);
    out.push([Number(m[1]), Number(m[2])]);
  }
  return out;
}

function interventions() {
  const spec = {};
  const heads = parseHeads($("ablate").value);
  if (heads.length) { spec.ablate = heads; spec.how = $("how").value; }
  const scale = Number($("scale").value);
  if ($("steer").value && scale !== 0) {
    const layer = $("steer-layer").value.trim();
    spec.steer = { name: $("steer").value, scale, unit: $("unit").value };
    if (layer !== "") spec.steer.layer = Number(layer);
  }
  return Object.keys(spec).length ? spec : null;
}

function withInterventions(body) {
  const iv = interventions();
  if (iv) body.interventions = iv;
  return body;
}

function toggleAblation(layer, head) {
  const heads = parseHeads($("ablate").value);
  const at = heads.findIndex(([l, h]) => l === layer && h === head);
  if (at >= 0) heads.splice(at, 1); else heads.push([layer, head]);
  $("ablate").value = heads.map(([l, h]) => `${l}.${h}`).join(", ");
  changed();
}

function showActive(labels) {
  const box = $("active");
  box.replaceChildren();
  box.dataset.count = String(labels.length);
  if (!labels.length) { box.textContent = "no interventions: the model as it is"; return; }
  for (const l of labels) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.textContent = l;
    box.append(chip);
  }
}

// -- the URL holds the page's state ------------------------------------------------------------------------------
const FIELDS = { p: "prompt", c: "corrupt", t: "target", x: "contrast", abl: "ablate", how: "how", st: "steer",
  sl: "steer-layer", ss: "scale", u: "unit", lens: "lens", l2: "lens2", col: "lens-colour", thr: "threshold",
  al: "att-layer", gm: "graph-mode" };
const CHECKS = { pair: "pair", sc: "att-scores" };
const SEL = ["layer", "head", "pos", "lens", "kind"];

function saveURL() {
  const q = new URLSearchParams();
  q.set("v", WB.view);
  for (const [k, id] of Object.entries(FIELDS)) if ($(id).value !== "") q.set(k, $(id).value);
  for (const [k, id] of Object.entries(CHECKS)) if ($(id).checked) q.set(k, "1");
  for (const k of SEL) if (WB.sel[k] !== null) q.set("s" + k, String(WB.sel[k]));
  history.replaceState(null, "", location.pathname + location.search + "#" + q.toString());
}

function loadURL() {
  const q = new URLSearchParams(location.hash.slice(1));
  for (const [k, id] of Object.entries(FIELDS)) {
    if (q.has(k)) {
      const e = $(id);
      if (e.tagName === "SELECT" && ![...e.options].some((o) => o.value === q.get(k))) e.add(new Option(q.get(k), q.get(k)));
      e.value = q.get(k);
    }
  }
  for (const [k, id] of Object.entries(CHECKS)) $(id).checked = q.get(k) === "1";
  for (const k of SEL) {
    const v = q.get("s" + k);
    WB.sel[k] = v === null ? null : (k === "lens" || k === "kind" ? v : Number(v));
  }
  if (q.has("v")) WB.view = q.get("v");
}

// -- refreshing the shown view -----------------------------------------------------------------------------------
function changed(delay) {
  for (const v of Object.values(WB.views)) v.stale = true;
  clearTimeout(WB.timer);
  WB.timer = setTimeout(refresh, delay === undefined ? 300 : delay);
}

async function refresh() {
  saveURL();
  $("corrupt-box").hidden = !$("pair").checked;
  const view = WB.views[WB.view];
  const mine = ++WB.seq;
  document.body.dataset.state = "busy";
  setStatus(`computing ${WB.view}…`);
  try {
    const t0 = performance.now();
    await view.render(mine);
    if (mine !== WB.seq) return;  // a newer refresh superseded this one
    view.stale = false;
    setStatus(`ready · ${WB.view} · ${((performance.now() - t0) / 1000).toFixed(2)} s`);
    document.body.dataset.state = "ready";
    document.body.dataset.seq = String(mine);
    document.body.dataset.view = WB.view;
  } catch (err) {
    if (mine !== WB.seq) return;
    setStatus(err.message, true);
    document.body.dataset.state = "error";
  }
}

function show(name) {
  WB.view = name;
  for (const b of document.querySelectorAll("#tabs button[data-view]")) b.classList.toggle("on", b.dataset.view === name);
  for (const s of document.querySelectorAll("section.view")) s.hidden = s.id !== "view-" + name;
  refresh();
}

function select(changes) {
  Object.assign(WB.sel, changes);
  saveURL();
}

// -- export: the shown view as one SVG (its pictures side by side), a PNG of that, or its data as JSON ----------
function composite() {
  const parts = WB.views[WB.view].svgs();
  if (!parts.length) throw new Error("nothing drawn yet in this view");
  const gap = 16;
  const sizes = parts.map((p) => [Number(p.getAttribute("width")), Number(p.getAttribute("height"))]);
  const W = sizes.reduce((a, [w]) => a + w + gap, 0), H = Math.max(...sizes.map(([, h]) => h));
  const out = svgRoot(W, H, "export");
  let x = 0;
  parts.forEach((p, i) => {
    const g = el("g", { transform: `translate(${x},0)` }, out);
    for (const child of p.childNodes) g.append(child.cloneNode(true));
    x += sizes[i][0] + gap;
  });
  const style = el("style", {}, out);
  style.textContent = "text{font-family:sans-serif;font-size:10px}.title{font-size:12px;font-weight:bold}";
  return new XMLSerializer().serializeToString(out);
}

function exportData(kind) {
  if (kind === "json") return JSON.stringify(WB.answers[WB.view] || null, null, 1);
  return composite();
}

function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

async function exportView(kind) {
  const name = `lmscope-${WB.view}.${kind}`;
  if (kind === "json") { download(name, new Blob([exportData("json")], { type: "application/json" })); return; }
  const svg = exportData("svg");
  if (kind === "svg") { download(name, new Blob([svg], { type: "image/svg+xml" })); return; }
  const png = await pngOf(svg);
  download(name, png);
}

function pngOf(svg) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.width * 2; c.height = img.height * 2;
      const ctx = c.getContext("2d");
      ctx.scale(2, 2);
      ctx.drawImage(img, 0, 0);
      c.toBlob((b) => (b ? resolve(b) : reject(new Error("PNG export failed"))), "image/png");
    };
    img.onerror = () => reject(new Error("PNG export failed"));
    img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svg);
  });
}
