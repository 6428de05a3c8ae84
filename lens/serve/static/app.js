// lmscope workbench: start-up and the wiring of the controls. The page's state lives in the URL (#...), so a view
// can be shared or reopened as it was.
"use strict";

function fillOptions(info) {
  const m = info.model;
  $("model-info").textContent = `${m.spec} (${m.arch}, ${m.n_layers} layers × ${m.n_heads} heads) · schema v${info.schema_version}`;
  for (const n of Object.keys(info.lenses)) {
    const o = new Option(n, n);
    o.title = info.lenses[n];
    $("lens").add(o);
    $("lens2").add(new Option(n, n));
  }
  const other = Object.keys(info.lenses).find((n) => n !== "logit");
  if (other) $("lens2").value = other;
  for (const s of info.steering) $("steer").add(new Option(s, s));
  for (let l = 0; l < m.n_layers; l++) $("att-layer").add(new Option(String(l), String(l)));
  $("steer-layer").max = String(m.n_layers - 1);
}

function scaleRange() {
  const raw = $("unit").value === "raw";
  $("scale").min = raw ? "-20" : "-3";
  $("scale").max = raw ? "20" : "3";
  $("scale").step = raw ? "0.5" : "0.05";
  $("scale-value").textContent = $("scale").value;
}

async function loadIoi() {
  const task = await api("/api/v1/tasks/ioi?n=8");
  const pick = $("ioi-pick");
  pick.replaceChildren(...task.pairs.map((p, i) => new Option(`${i}: ${p.clean.slice(0, 40)}…`, String(i))));
  pick.hidden = false;
  const use = () => {
    const p = task.pairs[Number(pick.value)];
    $("prompt").value = p.clean;
    $("corrupt").value = p.corrupt;
    $("target").value = p.target.replace(/^ /, "␣");
    $("contrast").value = (p.distractor || "").replace(/^ /, "␣");
    $("pair").checked = true;
    changed(0);
  };
  pick.onchange = use;
  use();
}

function wire() {
  for (const id of ["prompt", "corrupt", "target", "contrast"]) $(id).addEventListener("input", () => changed());
  $("ablate").addEventListener("input", () => changed(500));
  for (const id of ["pair", "lens", "lens2", "lens-colour", "how", "steer", "steer-layer", "att-scores", "graph-mode"]) {
    $(id).addEventListener("change", () => changed(0));
  }
  $("unit").addEventListener("change", () => { scaleRange(); changed(0); });
  $("scale").addEventListener("input", () => { $("scale-value").textContent = $("scale").value; changed(); });
  $("att-layer").addEventListener("change", () => { select({ layer: Number($("att-layer").value), kind: "layer" }); changed(0); });
  $("clear").addEventListener("click", () => { $("ablate").value = ""; $("scale").value = "0"; scaleRange(); changed(0); });
  $("threshold").addEventListener("input", () => { drawGraph(); saveURL(); });
  for (const id of ["patch-run", "graph-run"]) $(id).addEventListener("click", () => refresh());
  $("patch-cancel").addEventListener("click", () => {
    const j = WB.jobs.patching;
    if (j) api(`/api/v1/jobs/${j.id}`, null, "DELETE").then((a) => { $("patch-state").textContent = a.state; });
  });
  $("ioi").addEventListener("click", () => loadIoi().catch((err) => setStatus(err.message, true)));
  for (const b of document.querySelectorAll("#tabs button[data-view]")) b.addEventListener("click", () => show(b.dataset.view));
  for (const b of document.querySelectorAll("#tabs button[data-export]")) {
    b.addEventListener("click", () => exportView(b.dataset.export).catch((err) => setStatus(err.message, true)));
  }
}

// Reopen the selection panel the URL names.
function restoreSelection() {
  const s = WB.sel;
  if (s.kind === "head" && s.layer !== null && s.head !== null) showHead(s.layer, s.head);
  else if (s.kind === "mlp" && s.layer !== null) showMlp(s.layer);
  else if (s.kind === "cell" && s.layer !== null) showCell(s.lens || $("lens").value, `resid_post.${s.layer}`, s.pos === null ? -1 : s.pos);
}

async function init() {
  try {
    WB.info = await api("/api/v1/info");
    fillOptions(WB.info);
    loadURL();
    scaleRange();  // the unit sets the slider's range; then the scale the URL holds
    const ss = new URLSearchParams(location.hash.slice(1)).get("ss");
    if (ss !== null) { $("scale").value = ss; $("scale-value").textContent = ss; }
    wire();
    show(WB.views[WB.view] ? WB.view : "lens");
    restoreSelection();
    // a hash typed or pasted into the address bar (the page's own updates replace it without this event)
    window.addEventListener("hashchange", () => { loadURL(); show(WB.views[WB.view] ? WB.view : "lens"); restoreSelection(); });
  } catch (err) {
    setStatus("cannot reach the server: " + err.message, true);
    document.body.dataset.state = "error";
  }
}

init();
