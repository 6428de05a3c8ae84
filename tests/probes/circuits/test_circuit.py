"""Circuits as edge sets: the pruning rule (hand-built cases, GQA groups, and an independent path search on random
masks), choosing edges from scores, save/load round trips, networkx export, static and interactive drawings."""

from __future__ import annotations

import html
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from lmscope.interventions import InputError
from lmscope.probes.circuits import Circuit, EdgeGraph, EdgeScores, prune

#: 2 layers of 4 query heads in 2 KV groups (heads 0-1 read k/v group 0, heads 2-3 group 1), sequential blocks.
GQA = EdgeGraph(n_layers=2, n_heads=4, n_kv_heads=2, parallel=False)


def kept(graph: EdgeGraph, names: list[str]) -> torch.Tensor:
    return ~graph.mask(names, keep=False)


def names_of(graph: EdgeGraph, mask: torch.Tensor) -> set[str]:
    return {graph.edge_name(t, u) for t, u in mask.nonzero().tolist()}


def test_an_edge_from_an_unreachable_node_is_dropped_and_so_is_what_only_it_feeds() -> None:
    path = ["embed->A0.0.q", "A0.0->M0", "M0->logits"]
    unreachable = ["A0.1->M1", "M1->logits"]  # nothing enters A0.1, so M1 only sees an unreached node
    assert names_of(GQA, prune(GQA, kept(GQA, path + unreachable))) == set(path)


def test_a_dangling_edge_that_reaches_no_logits_is_dropped() -> None:
    path = ["embed->A0.0.q", "A0.0->logits", "embed->M0", "M0->logits"]
    dangling = ["embed->A1.2.q", "A0.0->A1.1.k", "A1.2->M1"]  # M1 has no edge out
    assert names_of(GQA, prune(GQA, kept(GQA, path + dangling))) == set(path)


@pytest.mark.parametrize(("edges", "survivors"), [
    (["embed->A0.0.k", "A0.1->logits"], {"embed->A0.0.k", "A0.1->logits"}),  # head 1 reads k group 0
    (["embed->A0.1.k", "A0.1->logits"], set()),  # group 1 feeds heads 2 and 3 only
    (["embed->A0.1.v", "A0.3->logits", "A0.2->M0"], {"embed->A0.1.v", "A0.3->logits"}),
    (["embed->A0.0.v", "A0.0->A1.1.k", "A1.3->logits"], {"embed->A0.0.v", "A0.0->A1.1.k", "A1.3->logits"}),
])
def test_a_kv_target_counts_for_every_head_of_its_group(edges: list[str], survivors: set[str]) -> None:
    assert names_of(GQA, prune(GQA, kept(GQA, edges))) == survivors


def _on_paths(graph: EdgeGraph, mask: torch.Tensor) -> set[str]:
    """Independent reference: breadth-first search over node and target vertices built from the names alone."""
    group = graph.n_heads // graph.n_kv_heads
    succ: dict[str, set[str]] = {}
    for t, u in mask.nonzero().tolist():
        succ.setdefault(graph.nodes[u], set()).add("t:" + graph.targets[t])
    for target in graph.targets:
        parts = target.split(".")
        if target == "logits":
            heads = ["logits"]
        elif len(parts) == 1:
            heads = [target]
        elif parts[2] == "q":
            heads = [f"{parts[0]}.{parts[1]}"]
        else:
            heads = [f"{parts[0]}.{h}" for h in range(graph.n_heads) if h // group == int(parts[1])]
        succ.setdefault("t:" + target, set()).update(heads)
    pred: dict[str, set[str]] = {}
    for a, bs in succ.items():
        for b in bs:
            pred.setdefault(b, set()).add(a)

    def search(start: str, step: dict[str, set[str]]) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in step.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    forward, backward = search("embed", succ), search("logits", pred)
    return {graph.edge_name(t, u) for t, u in mask.nonzero().tolist()
            if graph.nodes[u] in forward and "t:" + graph.targets[t] in backward}


@pytest.mark.parametrize("graph", [GQA, EdgeGraph(3, 4, 1, True), EdgeGraph(3, 2, 2, False)],
                         ids=["gqa", "mqa-parallel", "mha"])
def test_pruning_keeps_exactly_the_edges_on_input_to_logits_paths(graph: EdgeGraph) -> None:
    gen = torch.Generator().manual_seed(0)
    for density in (0.03, 0.08, 0.2, 0.5):
        for _ in range(5):
            mask = (torch.rand(graph.n_targets, graph.n_nodes, generator=gen) < density) & graph.valid
            got = prune(graph, mask)
            assert names_of(graph, got) == _on_paths(graph, mask)
            assert torch.equal(prune(graph, got), got)  # pruning twice changes nothing


def _scores(graph: EdgeGraph, seed: int = 0) -> EdgeScores:
    gen = torch.Generator().manual_seed(seed)
    per_pair = torch.randn(3, graph.n_targets, graph.n_nodes, generator=gen)
    per_pair[:, graph.target_index("M1"), graph.node_index("A0.2")] = float("nan")  # one unscored edge
    per_pair = torch.where(graph.valid, per_pair, torch.full_like(per_pair, float("nan")))
    return EdgeScores(graph, per_pair, "eap", torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.0, 1.0]),
                      {"ig_steps": None, "source": "corrupt"})


def test_a_circuit_from_scores_is_the_top_k_or_the_threshold_then_pruned() -> None:
    scores = _scores(GQA)
    values = scores.edge_values("abs").nan_to_num(-1.0)
    names = GQA.edge_names
    top = {names[i] for i in values.argsort(descending=True)[:12].tolist()}
    raw = scores.circuit(k=12, prune=False)
    assert set(raw.edges) == top and raw.n_edges == 12
    assert torch.equal(scores.circuit(k=12).in_circuit, prune(GQA, raw.in_circuit))
    threshold = float(values.sort(descending=True).values[11])  # the 12th largest |mean|: the same 12 edges
    assert set(scores.circuit(threshold=threshold, prune=False).edges) == top
    assert raw.mask()[raw.in_circuit].all() and not raw.mask()[GQA.valid & ~raw.in_circuit].any()
    assert raw.edge_scores()[raw.edges[0]] == float(scores.mean[GQA.parse_edge(raw.edges[0])])


def test_bad_circuit_requests_name_what_is_wrong() -> None:
    scores = _scores(GQA)
    with pytest.raises(InputError, match="exactly one of k= .* and threshold="):
        scores.circuit()
    with pytest.raises(InputError, match="exactly one of k="):
        scores.circuit(k=3, threshold=0.1)
    with pytest.raises(InputError, match=f"k=1000 is more edges than have a score \\({GQA.n_edges - 1} of"):
        scores.circuit(k=1000)
    with pytest.raises(InputError, match="threshold must be a number >= 0"):
        scores.circuit(threshold=-1.0)
    with pytest.raises(InputError, match=r"shape \[19, 11\]"):
        Circuit(GQA, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="bool tensor"):
        Circuit(GQA, torch.ones(19, 11))
    with pytest.raises(InputError, match="does not feed"):
        Circuit.from_edges(GQA, ["M1->A1.0.q"])
    with pytest.raises(InputError, match="more than the graph's"):
        Circuit.random(GQA, GQA.n_edges + 1)


def test_random_circuits_are_reproducible_by_seed() -> None:
    a, b = Circuit.random(GQA, 20, seed=(0, 5, 1)), Circuit.random(GQA, 20, seed=(0, 5, 1))
    assert torch.equal(a.in_circuit, b.in_circuit) and a.n_edges == 20
    assert not torch.equal(a.in_circuit, Circuit.random(GQA, 20, seed=(0, 5, 2)).in_circuit)
    assert not torch.equal(Circuit.random(GQA, 20, seed=3).in_circuit, Circuit.random(GQA, 20, seed=4).in_circuit)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int32)


def test_scores_and_circuits_save_and_load_exactly(tmp_path: Path) -> None:
    scores = _scores(GQA)
    scores.save(tmp_path / "scores")
    again = EdgeScores.load(tmp_path / "scores")
    assert again.graph == GQA and again.method == "eap" and again.info == scores.info
    for name in ("per_pair", "clean_metric", "corrupt_metric"):
        assert torch.equal(_bits(getattr(again, name)), _bits(getattr(scores, name))), name
    circuit = scores.circuit(k=15)
    circuit.save(tmp_path / "circuit")
    loaded = Circuit.load(tmp_path / "circuit")
    assert loaded.graph == GQA and loaded.info == circuit.info and loaded.edges == circuit.edges
    assert loaded.scores is not None and circuit.scores is not None
    assert torch.equal(_bits(loaded.scores), _bits(circuit.scores))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuit", "scores"]  # no temporary folders left
    with pytest.raises(InputError, match="edge_scores.json is missing"):
        EdgeScores.load(tmp_path / "circuit")
    with pytest.raises(InputError, match="circuit.json is missing"):
        Circuit.load(tmp_path / "scores")
    d = circuit.to_dict()
    assert d["edges"] == circuit.edges and set(d["scores"]) == set(circuit.edges)
    assert len(scores.to_dict()["scores"]) == GQA.n_edges - 1  # the unscored edge is left out


def _gqa_circuit() -> Circuit:
    edges = ["embed->A0.0.q", "embed->A0.0.k", "A0.0->M0", "M0->logits", "A0.1->logits"]
    scores = torch.full((GQA.n_targets, GQA.n_nodes), float("nan"))
    for value, name in enumerate(edges, start=1):
        scores[GQA.parse_edge(name)] = float(value)
    return Circuit.from_edges(GQA, edges, scores=scores)


def test_nodes_and_the_networkx_graph_follow_the_circuit() -> None:
    pytest.importorskip("networkx")
    circuit = _gqa_circuit()
    assert circuit.nodes() == ["embed", "A0.0", "A0.1", "M0", "logits"]
    g = circuit.to_networkx()
    assert list(g.nodes) == circuit.nodes()
    assert g.nodes["A0.1"] == {"kind": "head", "layer": 0, "head": 1}
    assert g.nodes["embed"]["layer"] == -1 and g.nodes["logits"] == {"kind": "logits", "layer": 2, "head": None}
    assert set(g.edges) == {("embed", "A0.0"), ("embed", "A0.1"), ("A0.0", "M0"), ("M0", "logits"),
                            ("A0.1", "logits")}
    both = g.edges["embed", "A0.0"]
    assert both["edges"] == ["embed->A0.0.q", "embed->A0.0.k"] and both["inputs"] == ["q", "k"]
    assert both["score"] == 3.0 and g.edges["embed", "A0.1"]["score"] == 2.0  # the k edge feeds heads 0 and 1
    assert g.graph["n_edges"] == 5 and g.graph["n_kv_heads"] == 2


def test_drawn_columns_are_the_used_ones_side_by_side_in_forward_order() -> None:
    from lmscope.probes.circuits.layout import positions

    graph = EdgeGraph(n_layers=6, n_heads=4, n_kv_heads=4, parallel=False)
    edges = ["embed->A4.2.q", "A4.2->M4", "A4.0->M4", "M4->logits", "embed->M0", "M0->logits"]
    pos = positions(graph, Circuit.from_edges(graph, edges).nodes())
    assert {n: x for n, (x, _) in pos.items()} == {"embed": 0.0, "M0": 1.0, "A4.0": 2.0, "A4.2": 2.0, "M4": 3.0,
                                                    "logits": 4.0}  # layers 1-3 and layer 0's heads take no column
    assert pos["A4.0"][1] == -0.5 and pos["A4.2"][1] == 0.5  # stacked by head index, centred


def test_to_networkx_without_networkx_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "networkx", None)
    with pytest.raises(InputError, match="pip install networkx"):
        _gqa_circuit().to_networkx()


def test_the_figure_is_a_png_or_svg_file(tmp_path: Path) -> None:
    circuit = _scores(GQA).circuit(k=25)
    circuit.plot(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    circuit.plot(tmp_path / "c.svg")
    assert b"<svg" in (tmp_path / "c.svg").read_bytes()[:2000]
    Circuit(GQA, torch.zeros(GQA.n_targets, GQA.n_nodes, dtype=torch.bool)).plot(tmp_path / "empty.png")
    with pytest.raises(InputError, match="Cannot save a figure as 'c.txt'"):
        circuit.plot(tmp_path / "c.txt")


def test_the_html_page_is_self_contained_and_holds_every_edge(tmp_path: Path) -> None:
    circuit = _scores(GQA).circuit(k=40)
    out = circuit.plot(tmp_path / "c.html")
    page = Path(out).read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "src=" not in page
    for name, score in circuit.edge_scores().items():
        assert f'data-name="{html.escape(name)}" data-score="{score:.4g}"' in page
    assert 'type="range"' in page and "<script>" in page and page.count('class="n"') == len(circuit.nodes())
    assert [p.name for p in tmp_path.iterdir()] == ["c.html"]  # written atomically: no temporary file left


def test_the_html_page_reacts_in_a_browser(tmp_path: Path) -> None:
    """The slider hides edges below it, a click on a node highlights exactly its edges, hovering names an edge."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing (dev set-up)")
    chromium, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("chromium or chromedriver not found (make browser-deps)")
    from selenium.webdriver.chrome.service import Service

    circuit = _scores(GQA).circuit(k=40)
    page = circuit.to_html(tmp_path / "c.html")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        driver.get(page.resolve().as_uri())
        assert driver.find_element("id", "shown").text.endswith(f": {circuit.n_edges} edges")
        scores = sorted(abs(s) for s in circuit.edge_scores().values())
        cut = scores[len(scores) // 2]
        value, visible = driver.execute_script("""var s = document.getElementById('thr'); s.value = arguments[0];
            s.dispatchEvent(new Event('input'));  /* the slider snaps the value to its step: read it back */
            return [parseFloat(s.value), [].filter.call(document.querySelectorAll('g.e'), function (e) {
                return e.style.display !== 'none'; }).map(function (e) { return e.getAttribute('data-name'); })];""",
                                               cut)
        shown = {n for n, s in circuit.edge_scores().items() if float(f"{abs(s):.6g}") >= value}
        assert set(visible) == shown and 0 < len(shown) < circuit.n_edges
        driver.find_element("css selector", 'g.n[data-node="M0"]').click()
        lit = driver.execute_script("return [].map.call(document.querySelectorAll('g.e.hl'), function (e) {"
                                    "return [e.getAttribute('data-from'), e.getAttribute('data-to')]; });")
        assert lit and all("M0" in ends for ends in lit)
        assert len(lit) == sum(1 for e in driver.find_elements("css selector", "g.e")
                               if "M0" in (e.get_attribute("data-from"), e.get_attribute("data-to")))
        name = driver.execute_script("var e = document.querySelector('g.e'); e.dispatchEvent(new Event('mouseenter'));"
                                     "return e.getAttribute('data-name');")
        assert driver.find_element("id", "info").text.startswith(name + " ")
    finally:
        driver.quit()


def test_scores_kept_as_their_mean_only_claim_no_standard_error() -> None:
    """A study saved without per-pair scores keeps one averaged "pair": its spread is unknown, not 0."""
    scores = _scores(GQA)
    assert float(scores.edge_values("stderr").nan_to_num(0).abs().max()) > 0
    averaged = EdgeScores(GQA, scores.mean[None], "eap", scores.clean_metric.mean()[None],
                          scores.corrupt_metric.mean()[None], {"pairs_averaged": scores.n_pairs})
    assert torch.isnan(averaged.stderr).all() and all(math.isnan(e) for _, _, e in averaged.top(3))
    assert all(row["stderr"] is None for row in averaged.to_dict()["scores"].values())
    json.dumps(averaged.to_dict(), allow_nan=False)  # strict JSON
