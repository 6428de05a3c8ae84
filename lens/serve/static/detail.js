// lmscope workbench, the selection panel: a lens cell's top-k and promoted/suppressed tokens, a head's pattern, DLA
// and lens reading, an MLP's top neurons. Every view drills down here (the linked selection).
"use strict";

let detailSeq = 0;

function detailStart(kind, title) {
  const body = $("detail-body");
  body.replaceChildren();
  body.className = "";
  body.dataset.kind = kind;
  body.dataset.state = "busy";
  const h = document.createElement("h3");
  h.textContent = title;
  body.append(h);
  return ++detailSeq;
}

function detailDone(mine, parts) {
  if (mine !== detailSeq) return;
  $("detail-body").append(...parts);
  $("detail-body").dataset.state = "ready";
}

function detailError(mine, err) {
  if (mine !== detailSeq) return;
  const p = document.createElement("p");
  p.className = "error";
  p.textContent = err.message;
  $("detail-body").append(p);
  $("detail-body").dataset.state = "error";
}

function tokenTable(title, rows, key, cls) {
  const t = document.createElement("table");
  t.className = "tokens " + cls;
  const cap = t.createCaption();
  cap.textContent = title;
  for (const r of rows) {
    const row = t.insertRow();
    row.dataset.token = r.token;
    row.insertCell().textContent = visible(r.token);
    row.insertCell().textContent = key === "prob" ? `${(100 * r.prob).toFixed(1)}%` : (r[key] >= 0 ? "+" : "") + r[key].toFixed(2);
  }
  return t;
}

function cellTables(c) {
  const box = document.createElement("div");
  box.className = "celltables";
  const p = document.createElement("p");
  p.className = "hint";
  p.textContent = `${c.reading} at ${c.position} (${visible(c.token)}); change against ${c.previous}`;
  box.append(p, tokenTable("top-k", c.top, "prob", "top"), tokenTable("promoted", c.promoted, "change", "promoted"),
    tokenTable("suppressed", c.suppressed, "change", "suppressed"));
  return box;
}

function cellRequest(lens, reading, pos, k) {
  return withInterventions({ prompt: promptOf("prompt"), lens, reading, position: pos, top_k: k });
}

async function showCell(lens, reading, pos) {
  const mine = detailStart("cell", `lens cell · ${lens}`);
  try {
    const a = await api("/api/v1/lens/cell", cellRequest(lens, reading, pos, 8));
    WB.answers.detail = a;
    detailDone(mine, [cellTables(a.change)]);
  } catch (err) { detailError(mine, err); }
}

function ablateButton(layer, head) {
  const on = parseHeads($("ablate").value).some(([l, h]) => l === layer && h === head);
  const b = document.createElement("button");
  b.id = "detail-ablate";
  b.textContent = on ? `restore L${layer}H${head}` : `ablate L${layer}H${head}`;
  b.addEventListener("click", () => toggleAblation(layer, head));
  return b;
}

async function showHead(layer, head) {
  const mine = detailStart("head", `head L${layer}H${head}`);
  const prompt = promptOf("prompt");
  try {
    const target = await targetOrTop(prompt);
    const dla = { prompt, target };
    if (tokenOf("contrast") !== null) dla.contrast = tokenOf("contrast");
    const [att, attr, cell] = await Promise.all([
      api("/api/v1/attention", withInterventions({ prompt, layer })),
      api("/api/v1/attribution", withInterventions(dla)),
      api("/api/v1/lens/cell", cellRequest($("lens").value, `resid_post.${layer}`, -1, 5))]);
    WB.answers.detail = { attention: att, attribution: attr, cell };
    const toks = att.tokens.map(visible);
    const pic = heatmap({ title: "pattern (query ↓ × key →)", rows: toks.map((t) => t.slice(0, 10)),
      cols: toks.map((t) => t.slice(0, 10)), cell: [10, 10], value: (i, j) => att.pattern[head][i][j], colour: seqColour,
      tip: (i, j) => [`${toks[i]} → ${toks[j]}: ${att.pattern[head][i][j].toFixed(3)}`], cls: "detailpattern" });
    const v = attr.heads[layer][head];
    const p = document.createElement("p");
    p.className = "dla";
    p.dataset.value = v === null ? "" : String(v);
    p.textContent = `DLA on ${visible(attr.labels[0])}` + (attr.labels[1] ? ` − ${visible(attr.labels[1])}` : "") +
      `: ${v === null ? "—" : v.toFixed(4)} (of logit ${attr.logit.toFixed(3)}) · induction ` +
      `${fmt(att.repeated_scores.induction[head])}, previous-token ${fmt(att.head_scores["previous-token"][head])}`;
    detailDone(mine, [ablateButton(layer, head), p, pic, cellTables(cell.change)]);
  } catch (err) { detailError(mine, err); }
}

async function showMlp(layer) {
  const mine = detailStart("mlp", `MLP ${layer}`);
  const prompt = promptOf("prompt");
  try {
    const body = { prompt, layer, target: await targetOrTop(prompt), top_k: 10 };
    if (tokenOf("contrast") !== null) body.contrast = tokenOf("contrast");
    const [n, cell] = await Promise.all([api("/api/v1/neurons", withInterventions(body)),
      api("/api/v1/lens/cell", cellRequest($("lens").value, `resid_post.${layer}`, -1, 5))]);
    WB.answers.detail = { neurons: n, cell };
    const t = document.createElement("table");
    t.className = "neurons";
    t.createCaption().textContent = `top neurons by |DLA| (MLP total ${n.neurons.total.toFixed(3)})`;
    const head = t.insertRow();
    for (const h of ["neuron", "DLA", "activation"]) head.insertCell().textContent = h;
    for (const r of n.neurons.top_dla) {
      const row = t.insertRow();
      row.dataset.neuron = String(r.neuron);
      row.insertCell().textContent = String(r.neuron);
      row.insertCell().textContent = r.dla.toFixed(4);
      row.insertCell().textContent = r.activation.toFixed(3);
    }
    detailDone(mine, [t, cellTables(cell.change)]);
  } catch (err) { detailError(mine, err); }
}
