"""Information flow routes: the decomposition is exact on every tiny architecture, importances partition each
sum, the graph is exactly the kept edges reachable from the top, thresholds nest, the page prunes as the library
does, plots are written, bad input is refused."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest
import torch
from tiny_models import build_tiny, random_ids

from lmscope.interventions import Cache, HookedModel, InputError
from lmscope.interventions.errors import UnsupportedArchitectureError
from lmscope.interventions.tolerance import assert_close
from lmscope.probes.circuits import FlowGraph, flow_routes
from lmscope.probes.circuits.flow import Edge, Node
from lmscope.probes.circuits.flow_parts import check_values, flow_sites, layer_parts, proximity
from lmscope.probes.circuits.flow_plot import ROUTES_JS, page_data

N = 7


def needs_pattern(model: HookedModel) -> None:
    if "attn_pattern" not in model.available_kinds:
        pytest.skip("no attn_pattern on this architecture (its attention computes probabilities inline)")


def ids(seed: int = 1) -> torch.Tensor:
    return random_ids((N,), seed)


def test_decomposition_is_exact(tiny: HookedModel) -> None:
    """residual + Σ_j attention parts (+ bias) == resid_mid (== attn_out without the residual); + MLP ==
    resid_post; attention parts from later positions are zero."""
    needs_pattern(tiny)
    parallel = "resid_mid" not in tiny.available_kinds
    extra = ["attn_out.*", "resid_post.*"] + ([] if parallel else ["resid_mid.*"])
    cache = Cache(flow_sites(tiny) + extra)
    tiny.run(ids(), [cache])
    for layer in range(tiny.n_layers):
        parts = layer_parts(tiny, cache, layer, N)
        attn = parts.attention(slice(None))  # [q, k, d]
        assert parts.parallel == parallel
        rows, cols = torch.triu_indices(N, N, 1)
        assert float(attn[rows, cols].abs().max()) == 0  # query i reads no later position j
        attn_sum = attn.sum(1) + (parts.bias if parts.bias is not None else 0)
        assert_close(attn_sum, cache[f"attn_out.{layer}"][0], msg=f"attention parts, layer {layer}")
        first, last = parts.totals()
        if not parallel:
            assert_close(parts.resid + attn_sum, cache[f"resid_mid.{layer}"][0], msg=f"resid_mid, layer {layer}")
            assert_close(first, cache[f"resid_mid.{layer}"][0])
        assert_close(parts.resid + attn_sum + parts.mlp, cache[f"resid_post.{layer}"][0],
                     msg=f"resid_post, layer {layer}")
        assert_close(last, cache[f"resid_post.{layer}"][0])


def test_importances_partition_each_sum(tiny: HookedModel) -> None:
    """Every importance is >= 0, one sum's add to 1, and each is its part's proximity over the sum of proximities
    (recomputed here part by part from the decomposition)."""
    needs_pattern(tiny)
    graph = flow_routes(tiny, ids(), threshold=0.04)
    for layer_sums in graph.sums:
        for s in layer_sums:
            assert all(float(v.min()) >= 0 for v in s.importance.values())
            total = sum(v if v.dim() == 1 else v.sum(-1) for v in s.importance.values())
            assert bool((s.proximity > 0).all()), "a degenerate sum on a tiny model: the check below is vacuous"
            assert_close(total, torch.ones(N), msg="importances of one sum")
    cache = Cache(flow_sites(tiny))
    tiny.run(ids(), [cache])
    layer, pos = 1, N - 1
    parts = layer_parts(tiny, cache, layer, N)
    first, last = parts.totals()
    target = (last if parts.parallel else first)[pos].cpu()
    vectors = [parts.resid[pos]] + list(parts.attention(slice(pos, pos + 1))[0].cpu())
    vectors += [parts.bias[pos]] if parts.bias is not None else []
    vectors += [parts.mlp[pos]] if parts.parallel else []
    raw = [max(0.0, float(target.abs().sum() - (target - v.cpu()).abs().sum())) for v in vectors]
    node = Node(layer + 1, pos, "resid") if parts.parallel else Node(layer, pos, "mid")
    got = [c.importance for c in graph.components(layer, pos)[node]]
    assert_close(torch.tensor(got), torch.tensor(raw) / sum(raw), msg="importances vs proximities")


def test_proximity_formula() -> None:
    total = torch.tensor([[1.0, -2.0, 3.0]])
    part = torch.tensor([[1.0, 0.0, 4.0]])
    assert float(proximity(total, part)[0]) == 6.0 - 3.0
    assert float(proximity(total, -part)[0]) == 0.0  # farther than zero: clamped


def _expected_edges(graph: FlowGraph) -> set[Edge]:
    """The kept edges into every node of the graph, read from ``components`` (an independent path)."""
    out = set()
    for node in graph.nodes:
        if node.kind == "mlp":
            s = graph.components(node.layer, node.position)[Node(node.layer + 1, node.position, "resid")]
            (mlp,) = [c for c in s if c.name == "mlp"]
            inner = Node(node.layer, node.position, "resid" if graph.parallel else "mid")
            out.add(Edge(inner, node, mlp.importance, "mlp"))
        elif node.layer > 0 or node.kind == "mid":
            layer = node.layer if node.kind == "mid" else node.layer - 1
            out |= {Edge(c.source, node, c.importance, c.name)
                    for c in graph.components(layer, node.position)[node] if c.source is not None}
    return {e for e in out if e.importance >= graph.threshold}


def test_graph_is_the_kept_edges_reachable_from_the_top(tiny: HookedModel) -> None:
    needs_pattern(tiny)
    graph = flow_routes(tiny, ids(), threshold=0.02)
    assert graph.top == Node(tiny.n_layers, N - 1, "resid") and graph.top in graph.nodes
    assert graph.edges and all(e.importance >= 0.02 for e in graph.edges)
    assert all(e.kind in ("attn", "resid", "mlp") for e in graph.edges)  # the bias never is an edge
    assert set(graph.edges) == _expected_edges(graph)
    reached, frontier = {graph.top}, [graph.top]
    while frontier:
        node = frontier.pop()
        for e in graph.edges:
            if e.target == node and e.source not in reached:
                reached.add(e.source)
                frontier.append(e.source)
    assert reached == set(graph.nodes)
    assert len(graph.edges) == len(set(graph.edges))


def test_raising_the_threshold_never_adds_edges(tiny: HookedModel) -> None:
    needs_pattern(tiny)
    low = flow_routes(tiny, ids(), threshold=0.001)
    assert {e.kind for e in low.edges} == {"attn", "resid", "mlp"}
    previous = {(e.source, e.target, e.kind) for e in low.edges}
    for tau in (0.01, 0.04, 0.1, 0.3, 0.9):
        edges = {(e.source, e.target, e.kind) for e in flow_routes(tiny, ids(), threshold=tau).edges}
        assert edges <= previous
        previous = edges


def test_position_routes_equal_the_truncated_prompt(llama_tiny: HookedModel) -> None:
    """Causal attention: the routes to position 3 are those of the prompt cut after token 3."""
    graph = flow_routes(llama_tiny, ids(), threshold=0.02, position=3)
    cut = flow_routes(llama_tiny, ids()[:4], threshold=0.02)
    assert graph.top == cut.top == Node(llama_tiny.n_layers, 3, "resid")
    assert max(n.position for n in graph.nodes) <= 3
    assert {(e.source, e.target, e.kind) for e in graph.edges} == {(e.source, e.target, e.kind) for e in cut.edges}
    for a, b in zip(graph.sums, cut.sums):
        for sa, sb in zip(a, b):
            for name in sa.importance:
                assert_close(sa.importance[name], sb.importance[name])
    assert flow_routes(llama_tiny, ids(), threshold=0.02, position=-4).edges == graph.edges


def test_to_dict_is_json(llama_tiny: HookedModel) -> None:
    graph = flow_routes(llama_tiny, ids())
    record = json.loads(json.dumps(graph.to_dict()))
    assert record["top"] == [llama_tiny.n_layers, N - 1, "resid"]
    assert len(record["edges"]) == len(graph.edges) and len(record["nodes"]) == len(graph.nodes)
    assert record["tokens"] == [f"#{i}" for i in ids().tolist()]


def test_plots_are_written(llama_tiny: HookedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    graph = flow_routes(llama_tiny, ids())
    png, svg, page = graph.plot(tmp_path / "r.png"), graph.plot(tmp_path / "r.svg"), graph.plot(tmp_path / "r.html")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and svg.stat().st_size > 0
    text = page.read_text()
    assert 'type="range"' in text and "src=" not in text and "href=" not in text and "<link" not in text
    assert json.loads(text.split('id="flow-data">')[1].split("</script>")[0])["threshold"] == graph.threshold
    with pytest.raises(InputError, match=r"\.png, \.pdf, \.svg or \.html"):
        graph.plot(tmp_path / "r.txt")


@pytest.mark.skipif(shutil.which("node") is None, reason="node (to run the page's script) is not installed")
def test_page_prunes_like_flow_routes(llama_tiny: HookedModel) -> None:
    graph = flow_routes(llama_tiny, ids(), threshold=0.01)
    script = ROUTES_JS + (f"const D = {json.dumps(page_data(graph))};\n"
                          "for (const t of [0.02, 0.05, 0.1, 0.3]) console.log(JSON.stringify([...routes(D, t)[0]]));")
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=True).stdout
    for tau, line in zip((0.02, 0.05, 0.1, 0.3), out.splitlines()):
        kept = {graph.edges[k] for k in json.loads(line)}
        assert kept == set(flow_routes(llama_tiny, ids(), threshold=tau).edges)


def test_bad_inputs_are_refused(llama_tiny: HookedModel) -> None:
    with pytest.raises(InputError, match="one prompt; got 2"):
        flow_routes(llama_tiny, torch.stack([ids(1), ids(2)]))
    for bad in (0, 0.0, 1.0, -0.1, 1.5, True, "0.1", math.nan):
        with pytest.raises(InputError, match="strictly between 0 and 1"):
            flow_routes(llama_tiny, ids(), threshold=bad)  # type: ignore[arg-type]
    for bad_pos in (N, -N - 1, 1.5, True):
        with pytest.raises(InputError, match=rf"position must be an integer in {-N}..{N - 1}"):
            flow_routes(llama_tiny, ids(), position=bad_pos)  # type: ignore[arg-type]
    graph = flow_routes(llama_tiny, ids(), position=3)
    with pytest.raises(InputError, match="layer 3 is out of range"):
        graph.components(3, 0)
    with pytest.raises(InputError, match="cover positions 0..3"):
        graph.components(0, 4)
    alibi = HookedModel(build_tiny("falcon_alibi"))
    with pytest.raises(InputError, match="lacks attn_pattern"):
        flow_routes(alibi, ids())


def test_values_the_attention_did_not_use_are_refused(llama_tiny: HookedModel) -> None:
    """A value norm would make head_z differ from attn_pattern @ v: the check catches a 1% change of the values."""
    cache = Cache(flow_sites(llama_tiny))
    llama_tiny.run(ids(), [cache])
    pattern = cache["attn_pattern.0"][0]
    v = cache["v.0"][0][:, torch.arange(4) // 2]
    head_z = cache["head_z.0"][0]
    check_values(pattern, v, head_z, 0, torch.float32)
    with pytest.raises(UnsupportedArchitectureError, match="Layer 0: the attention's output"):
        check_values(pattern, v * 1.01, head_z, 0, torch.float32)


@pytest.mark.slow
def test_smollm_capital_of_france(smollm: HookedModel) -> None:
    graph = flow_routes(smollm, "The capital of France is")
    last = smollm.n_layers - 1
    assert graph.top in graph.nodes and graph.edges
    mid = Node(last, graph.position, "mid")
    attn = max((c for c in graph.components(last, -1)[mid] if c.name == "attn"), key=lambda c: c.importance)
    assert attn.source is not None and 0 < attn.importance <= 1
    print(f"\nstrongest attention edge into the top layer at {graph.tokens[-1]!r}: from position "
          f"{attn.source.position} {graph.tokens[attn.source.position]!r}, importance {attn.importance:.3f}; "
          f"{len(graph.edges)} edges, {len(graph.nodes)} nodes")
