// lmscope workbench, lens view: tokens x layers heat maps (logit and tuned lens side by side), one decode each.
"use strict";

const LENS_COLOURS = {
  prob: (tr, r, c) => seqColour(tr.top_probs[r][c][0]),
  entropy: (tr, r, c, scale) => warmColour(tr.entropy[r][c] / scale.entropy),
  kl: (tr, r, c, scale) => warmColour(tr.kl[r][c] / scale.kl),
  rank: (tr, r, c, scale) => (tr.target_rank
    ? seqColour(1 - Math.log(tr.target_rank[r][c][0]) / Math.log(scale.rank)) : "#eeeeee"),
};

// The target of the views: the box's token, else the model's own top token at the last position (one decode).
async function targetOrTop(prompt) {
  const t = tokenOf("target");
  if (t !== null) return t;
  const key = JSON.stringify([prompt, interventions()]);
  WB.tops = WB.tops || {};
  if (!(key in WB.tops)) {
    const a = await api("/api/v1/decode", withInterventions({ prompts: [prompt], positions: "last", layers: "-1", top_k: 1 }));
    WB.tops[key] = a.trajectories[0].final_top_ids[0][0];
  }
  return WB.tops[key];
}

function lensRequest(lens) {
  const body = { prompts: [promptOf("prompt")], lens, top_k: 5, positions: "all" };
  const t = tokenOf("target");
  if (t !== null) body.targets = [t];
  return withInterventions(body);
}

function lensTip(tr, r, c) {
  const lines = [`${tr.readings[r]} @ ${visible(tr.tokens[c])} (position ${tr.positions[c]})`];
  tr.top_tokens[r][c].forEach((tok, k) => {
    lines.push(`${String(k + 1).padStart(2)}. ${visible(tok).padEnd(14)} ${(100 * tr.top_probs[r][c][k]).toFixed(1)}%`);
  });
  lines.push(`entropy ${tr.entropy[r][c].toFixed(2)} nats · KL to output ${tr.kl[r][c].toFixed(2)} nats`);
  if (tr.target_rank) {
    lines.push(`target ${visible(tr.target_tokens[0])}: rank ${tr.target_rank[r][c][0]}, ` +
      `${(100 * tr.target_prob[r][c][0]).toFixed(2)}%`);
  }
  return lines;
}

function lensPanel(answer, lensName) {
  const tr = answer.trajectories[0];
  const div = document.createElement("div");
  div.className = "panel";
  div.dataset.lens = lensName;
  const metric = $("lens-colour").value;
  const scale = { entropy: Math.max(1e-6, ...tr.entropy.flat()), kl: Math.max(1e-6, ...tr.kl.flat()),
    rank: Math.max(2, ...(tr.target_rank ? tr.target_rank.flat(2) : [2])) };
  const n = tr.readings.length;
  const rowOf = (i) => n - 1 - i;  // deepest reading on top, like the CLI table read bottom-up
  const title = `${lensName} lens` + (tr.target_tokens.length ? ` · target ${visible(tr.target_tokens[0])}` : "") +
    ` · colour: ${metric}`;
  const svg = heatmap({
    title, rows: tr.readings.map((_, i) => tr.readings[rowOf(i)]), cols: tr.tokens.map(visible), cell: [46, 15],
    fill: (i, j) => LENS_COLOURS[metric](tr, rowOf(i), j, scale), cls: "lensmap",
    cellClass: (i, j) => (tr.target_rank && tr.target_rank[rowOf(i)][j][0] === 1 ? "hit" : ""),
    text: (i, j) => visible(tr.top_tokens[rowOf(i)][j][0]).slice(0, 7),
    data: (i, j) => ({ reading: tr.readings[rowOf(i)], pos: tr.positions[j], token: tr.top_tokens[rowOf(i)][j][0],
      prob: tr.top_probs[rowOf(i)][j][0], rank: tr.target_rank ? tr.target_rank[rowOf(i)][j][0] : "" }),
    tip: (i, j) => lensTip(tr, rowOf(i), j),
    onClick: (i, j) => {
      select({ layer: layerOf(tr.readings[rowOf(i)]), pos: tr.positions[j], lens: lensName, kind: "cell" });
      mark(div, i, j);
      showCell(lensName, tr.readings[rowOf(i)], tr.positions[j]);
    },
  });
  div.append(svg);
  if (tr.final_tokens) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = "model output (top-1 per position): " + tr.final_tokens.map(visible).join(" ");
    div.append(p);
  }
  return div;
}

function layerOf(reading) {
  const m = /\.(\d+)$/.exec(reading);
  return m ? Number(m[1]) : null;
}

function mark(panel, i, j) {
  panel.closest(".panels").querySelectorAll("g.cell.picked").forEach((g) => g.classList.remove("picked"));
  const g = panel.querySelector(`g.cell[data-row="${i}"][data-col="${j}"]`);
  if (g) g.classList.add("picked");
}

WB.views.lens = {
  async render(seq) {
    const lenses = [$("lens").value];
    if ($("lens2").value && $("lens2").value !== lenses[0]) lenses.push($("lens2").value);
    const answers = await Promise.all(lenses.map((l) => api("/api/v1/decode", lensRequest(l))));
    if (seq !== WB.seq) return;
    WB.answers.lens = answers;
    showActive(answers[0].active);
    $("lens-panels").replaceChildren(...answers.map((a, i) => lensPanel(a, lenses[i])));
  },
  svgs: () => [...document.querySelectorAll("#lens-panels svg")],
};
