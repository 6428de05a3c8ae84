// lmscope lens explorer: plain DOM + SVG, no library, no network beyond this server's /api/v1.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token") || "";
let seq = 0;
let timer = null;

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

// The target box accepts ␣ for a leading space.
function targetText() {
  const t = $("target").value.replace(/␣/g, " ");
  return t.trim() === "" ? null : t;
}

function colour(p) {  // white -> blue by probability
  const a = Math.max(0, Math.min(1, p));
  const r = Math.round(255 - 200 * a), g = Math.round(255 - 150 * a);
  return `rgb(${r},${g},255)`;
}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers["Authorization"] = "Bearer " + token;
  const resp = await fetch(path, body ? { method: "POST", headers, body: JSON.stringify(body) } : { headers });
  const data = await resp.json();
  if (!resp.ok) {
    const d = data.detail;
    throw new Error(typeof d === "string" ? d : (d || []).map((e) => e.msg).join("; "));
  }
  return data;
}

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function init() {
  try {
    const info = await api("/api/v1/info");
    const m = info.model;
    $("model-info").textContent = `${m.spec} (${m.arch}, ${m.n_layers} layers) · schema v${info.schema_version}`;
    const names = Object.keys(info.lenses);
    for (const sel of [$("lens"), $("lens2")]) {
      for (const n of names) sel.add(new Option(`${n}: ${info.lenses[n]}`, n));
    }
    $("lens2").value = names.find((n) => n !== "logit") || names[0];
    for (const s of info.steering) $("steer").add(new Option(s, s));
    if (info.steering.length) $("steer").value = info.steering[0];
    for (const id of ["prompt", "target", "topk"]) $(id).addEventListener("input", schedule);
    for (const id of ["lens", "lens2", "compare", "steer"]) $(id).addEventListener("change", schedule);
    $("scale").addEventListener("input", () => { $("scale-value").textContent = $("scale").value; schedule(); });
    $("run").addEventListener("click", decode);
    await decode();
  } catch (err) {
    setStatus("cannot reach the server: " + err.message, true);
    document.body.dataset.state = "error";
  }
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(decode, 250);
}

function request(lens) {
  const body = { prompts: [$("prompt").value], lens, top_k: Number($("topk").value) || 5, positions: "all" };
  const t = targetText();
  if (t !== null) body.targets = [t];
  const scale = Number($("scale").value);
  if ($("steer").value && scale !== 0) body.steer = { name: $("steer").value, scale };
  return body;
}

async function decode() {
  if (!$("prompt").value) { setStatus("type a prompt"); return; }
  const mine = ++seq;
  document.body.dataset.state = "busy";
  setStatus("decoding…");
  const lenses = [$("lens").value];
  if ($("compare").checked && $("lens2").value !== lenses[0]) lenses.push($("lens2").value);
  try {
    const answers = await Promise.all(lenses.map((l) => api("/api/v1/decode", request(l))));
    if (mine !== seq) return;  // a newer request superseded this one
    const panels = $("panels");
    panels.replaceChildren(...answers.map((a, i) => panel(a, lenses[i])));
    const secs = Math.max(...answers.map((a) => a.seconds));
    setStatus(`ready · ${secs.toFixed(2)} s` + (answers[0].steer ? ` · steered ×${answers[0].steer.scale}` : ""));
    document.body.dataset.state = "ready";
    document.body.dataset.seq = String(mine);
  } catch (err) {
    if (mine !== seq) return;
    setStatus(err.message, true);
    document.body.dataset.state = "error";
  }
}

function panel(answer, lensName) {
  const tr = answer.trajectories[0];
  const div = document.createElement("div");
  div.className = "panel";
  div.dataset.lens = lensName;
  const h = document.createElement("h2");
  h.textContent = answer.lens + (tr.target_tokens.length ? ` · target ${visible(tr.target_tokens[0])}` : "");
  div.append(h, table(tr));
  if (tr.target_rank) div.append(rankChart(tr));
  return div;
}

function table(tr) {
  const t = document.createElement("table");
  t.className = "heat";
  const head = t.insertRow();
  head.insertCell().outerHTML = "<th></th>";
  for (const tok of tr.tokens) {
    const th = document.createElement("th");
    th.textContent = visible(tok);
    th.title = JSON.stringify(tok);
    head.append(th);
  }
  // deepest reading on top, like the CLI table read bottom-up
  for (let r = tr.readings.length - 1; r >= 0; r--) {
    const row = t.insertRow();
    const th = document.createElement("th");
    th.className = "reading";
    th.textContent = tr.readings[r];
    row.append(th);
    tr.positions.forEach((pos, c) => {
      const td = row.insertCell();
      const top = tr.top_tokens[r][c][0];
      td.className = "cell";
      td.dataset.reading = tr.readings[r];
      td.dataset.pos = String(pos);
      td.dataset.token = top;
      td.textContent = visible(top);
      td.style.background = colour(tr.top_probs[r][c][0]);
      if (tr.target_rank) {
        const rank = tr.target_rank[r][c][0];
        td.dataset.rank = String(rank);
        if (rank === 1) td.classList.add("hit");
        const sup = document.createElement("sup");
        sup.textContent = rank;
        td.append(sup);
      }
      td.addEventListener("mousemove", (ev) => showTip(ev, tr, r, c));
      td.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
    });
  }
  return t;
}

function showTip(ev, tr, r, c) {
  const lines = [`${tr.readings[r]} @ ${visible(tr.tokens[c])} (position ${tr.positions[c]})`];
  tr.top_tokens[r][c].forEach((tok, k) => {
    lines.push(`${String(k + 1).padStart(2)}. ${visible(tok).padEnd(14)} ${(100 * tr.top_probs[r][c][k]).toFixed(1)}%`);
  });
  lines.push(`entropy ${tr.entropy[r][c].toFixed(2)} nats · KL to output ${tr.kl[r][c].toFixed(2)} nats`);
  if (tr.target_rank) {
    lines.push(`target ${visible(tr.target_tokens[0])}: rank ${tr.target_rank[r][c][0]}, ` +
      `${(100 * tr.target_prob[r][c][0]).toFixed(2)}%`);
  }
  const tip = $("tooltip");
  tip.textContent = lines.join("\n");
  tip.hidden = false;
  tip.style.left = ev.clientX + 14 + "px";
  tip.style.top = ev.clientY + 14 + "px";
}

// Target rank (log scale) by reading at the last decoded position.
function rankChart(tr) {
  const ns = "http://www.w3.org/2000/svg";
  const W = 360, H = 140, pad = 30;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "ranks");
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  const last = tr.positions.length - 1;
  const ranks = tr.readings.map((_, r) => tr.target_rank[r][last][0]);
  const maxLog = Math.max(1, ...ranks.map((k) => Math.log10(k)));
  const x = (i) => pad + (i * (W - 2 * pad)) / Math.max(1, ranks.length - 1);
  const y = (k) => pad / 2 + (Math.log10(k) / maxLog) * (H - pad * 1.5);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", ranks.map((k, i) => `${x(i)},${y(k)}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#d62728");
  svg.append(line);
  const label = (text, lx, ly) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", lx);
    t.setAttribute("y", ly);
    t.textContent = text;
    svg.append(t);
  };
  label(`rank of ${visible(tr.target_tokens[0])} at the last token (log scale, 1 at top)`, 4, 11);
  label(tr.readings[0], pad, H - 4);
  label(tr.readings[tr.readings.length - 1], W - pad - 60, H - 4);
  label(`final rank ${ranks[ranks.length - 1]}`, W - 90, 24);
  return svg;
}

init();
