// lmscope workbench, attribution view: direct logit attribution of the target (minus the contrast) per layer
// (attention and MLP blocks, as bars) and per head (a layer x head map).
"use strict";

async function dlaAnswer(prompt) {
  const target = await targetOrTop(prompt);
  const body = { prompt, target };
  const contrast = tokenOf("contrast");
  if (contrast !== null) body.contrast = contrast;
  return api("/api/v1/attribution", withInterventions(body));
}

function dlaBars(a) {
  const rows = ["embed"], values = [a.embed], what = [null];
  a.mlp.forEach((m, layer) => {
    rows.push(`attn ${layer}`, `mlp ${layer}`);
    values.push(a.attn[layer], m);
    what.push(["attn", layer], ["mlp", layer]);
  });
  rows.push("constant");
  values.push(a.constant);
  what.push(null);
  return bars({ title: "per block (red: raises the logit)", rows, values, barHeight: 11,
    onClick: (i) => {
      if (!what[i]) return;
      const [kind, layer] = what[i];
      if (kind === "mlp") { select({ layer, head: null, kind: "mlp" }); showMlp(layer); }
      else { select({ layer, kind: "layer" }); $("att-layer").value = String(layer); }
    } });
}

function dlaMap(a) {
  const L = a.heads.length, H = a.heads[0].length;
  const m = maxAbs(a.heads);
  const ablated = new Set(parseHeads($("ablate").value).map(([l, h]) => `${l}.${h}`));
  return heatmap({
    title: `per head (±${m.toPrecision(3)})`, rows: a.heads.map((_, l) => `L${l}`),
    cols: Array.from({ length: H }, (_, h) => `H${h}`), cell: [22, 14], cls: "dlamap",
    value: (l, h) => (a.heads[l][h] === null ? null : a.heads[l][h] / m), colour: divColour,
    cellClass: (l, h) => (ablated.has(`${l}.${h}`) ? "ablated" : "") + (WB.sel.kind === "head" && WB.sel.layer === l &&
      WB.sel.head === h ? " picked" : ""),
    data: (l, h) => ({ layer: l, head: h, value: a.heads[l][h] === null ? "" : a.heads[l][h] }),
    tip: (l, h) => [`L${l}H${h}: ${a.heads[l][h] === null ? "not split (see notes)" : a.heads[l][h].toFixed(4)}`,
      "click: pattern, DLA and lens reading; the selection panel toggles its ablation"],
    onClick: (l, h) => { select({ layer: l, head: h, kind: "head" }); showHead(l, h); },
  });
}

WB.views.attribution = {
  async render(seq) {
    const a = await dlaAnswer(promptOf("prompt"));
    if (seq !== WB.seq) return;
    WB.answers.attribution = a;
    showActive(a.active);
    const lab = a.labels.map((x) => (x === null ? null : visible(x)));
    $("dla-title").textContent = `DLA of ${lab[0]}` + (lab[1] ? ` − ${lab[1]}` : "") +
      `: logit ${a.logit.toFixed(3)} = sum of terms ${a.total.toFixed(3)}` + (a.notes.length ? ` · ${a.notes.join(" ")}` : "");
    $("dla-bars").replaceChildren(dlaBars(a));
    $("dla-map").replaceChildren(dlaMap(a));
  },
  svgs: () => [...document.querySelectorAll("#dla-bars svg, #dla-map svg")],
};
