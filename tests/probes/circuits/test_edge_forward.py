"""The edge-level forward (``EdgePatch``): exact identities on every tiny architecture.

All edges kept == the plain clean run (bit for bit: no target is touched); no edge kept == the corrupt run;
every edge out of one node dropped == patching that node's output from the corrupt run; several masks in one
forward == each mask alone; composition with Cache; save/load; errors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from toys import edge_pairs as pairs

from lmscope.interventions import Cache, HookedModel, InputError, Intervention, Patch
from lmscope.interventions.tolerance import assert_close
from lmscope.probes.circuits import EdgeGraph, EdgePatch, node_means, node_outputs

SANDWICH = {"gemma2", "gemma3_text", "olmo2"}


def test_all_edges_kept_is_the_clean_run_and_none_the_corrupt_run(tiny: HookedModel) -> None:
    graph = EdgeGraph.from_model(tiny)
    clean, corrupt = pairs()
    source, _ = node_outputs(tiny, corrupt, graph=graph)
    plain = tiny.run(clean).logits
    kept = tiny.run(clean, [EdgePatch(graph.mask(keep=False), source)]).logits
    assert torch.equal(kept, plain)
    dropped = tiny.run(clean, [EdgePatch(graph.mask(), source)]).logits
    corrupt_logits = tiny.run(corrupt).logits
    assert_close(dropped, corrupt_logits, n_ops=16, scale=float(corrupt_logits.abs().max()))
    assert float((plain - corrupt_logits).abs().max()) > 1e-2  # the pair differs: the identity means something


def _sender_patch(tiny: HookedModel, graph: EdgeGraph, node: int, corrupt: torch.Tensor) -> Intervention:
    name = graph.nodes[node]
    if name == "embed":
        return Patch("resid_pre.0", corrupt)
    if name.startswith("M"):
        return Patch(f"mlp_out.{name[1:]}", corrupt)
    layer, head = (int(x) for x in name[1:].split("."))
    return Patch(f"head_z.{layer}", corrupt, heads=[head])


def test_dropping_every_edge_out_of_a_node_is_patching_its_output(tiny: HookedModel) -> None:
    """A head under a post-attention norm (Gemma 2/3, OLMo-2) is defined through the norm's factor in each
    forward, which a head_z patch changes for every head: there only the MLP and the embedding are compared."""
    graph = EdgeGraph.from_model(tiny)
    clean, corrupt = pairs()
    source, _ = node_outputs(tiny, corrupt, graph=graph)
    senders = [0, graph.head_node(1, 2), graph.mlp_node(0), graph.head_node(0, 0)]
    if tiny.arch.name in SANDWICH:
        senders = [0, graph.mlp_node(0), graph.mlp_node(1)]
    for node in senders:
        mask = torch.ones(graph.n_targets, graph.n_nodes, dtype=torch.bool)
        mask[:, node] = False
        got = tiny.run(clean, [EdgePatch(mask, source)]).logits
        want = tiny.run(clean, [_sender_patch(tiny, graph, node, corrupt)]).logits
        assert_close(got, want, n_ops=16, scale=float(want.abs().max()), msg=graph.nodes[node])
        assert float((got - tiny.run(clean).logits).abs().max()) > 1e-4, graph.nodes[node]


def test_several_masks_in_one_forward_equal_each_mask_alone(llama_tiny: HookedModel) -> None:
    model = llama_tiny
    graph = EdgeGraph.from_model(model)
    clean, corrupt = pairs()
    source, _ = node_outputs(model, corrupt, graph=graph)
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(3, graph.n_targets, graph.n_nodes, generator=gen) < 0.7
    together = model.run(clean.repeat(3, 1), [EdgePatch(masks, source)]).logits
    for m in range(3):
        alone = model.run(clean, [EdgePatch(masks[m], source)]).logits
        assert_close(together[2 * m:2 * m + 2], alone, n_ops=8)


def test_a_mean_source_is_the_same_node_value_at_every_position(llama_tiny: HookedModel) -> None:
    model = llama_tiny
    graph = EdgeGraph.from_model(model)
    clean, corrupt = pairs()
    means = node_means(model, corrupt, graph=graph)
    assert means.shape == (graph.n_nodes, model.d_model)
    mask = graph.mask(["A1.2->M2", "M0->A2.1.q", "embed->logits"], keep=False)
    spread = means[None, :, None, :].expand(2, -1, clean.shape[1], -1)
    assert torch.equal(model.run(clean, [EdgePatch(mask, means)]).logits,
                       model.run(clean, [EdgePatch(mask, spread)]).logits)


def test_composes_with_cache_and_saves_and_loads(llama_tiny: HookedModel, tmp_path: Path) -> None:
    model = llama_tiny
    graph = EdgeGraph.from_model(model)
    clean, corrupt = pairs()
    source, _ = node_outputs(model, corrupt, graph=graph)
    patch = EdgePatch(graph.mask(["M0->A1.0.q", "A0.3->logits"], keep=False), source)
    cache = Cache(["q.1", "ln2.0"])
    logits = model.run(clean, [patch, cache]).logits
    plain = Cache(["q.1", "ln2.0"])
    model.run(clean, [plain])
    assert not torch.equal(cache["q.1"][:, :, 0], plain["q.1"][:, :, 0])  # the patched query was recorded
    assert torch.equal(cache["q.1"][:, :, 1:], plain["q.1"][:, :, 1:])  # other heads untouched
    assert torch.equal(cache["ln2.0"], plain["ln2.0"])
    patch.save(tmp_path / "edge")
    again = Intervention.load(tmp_path / "edge")
    assert again == patch
    assert torch.equal(model.run(clean, [again]).logits, logits)


def test_bad_masks_sources_and_generation_are_refused(llama_tiny: HookedModel) -> None:
    model = llama_tiny
    graph = EdgeGraph.from_model(model)
    clean, corrupt = pairs()
    source, _ = node_outputs(model, corrupt, graph=graph)
    with pytest.raises(InputError, match="bool tensor"):
        EdgePatch(torch.ones(3, 3), source)
    with pytest.raises(InputError, match=r"shape \[masks, 28, 16\]"):
        model.run(clean, [EdgePatch(torch.ones(4, 4, dtype=torch.bool), source)])
    with pytest.raises(InputError, match="16 nodes of width 32"):
        model.run(clean, [EdgePatch(graph.mask(), source[:, :3])])
    with pytest.raises(InputError, match="masks x batch rows"):
        model.run(clean[:1], [EdgePatch(graph.mask(), source)])
    with pytest.raises(InputError, match="cannot extend a KV cache"):
        model.generate(clean[:1], max_new_tokens=2, interventions=[EdgePatch(graph.mask(), source[:1])])
    with pytest.raises(InputError, match="does not feed"):
        graph.parse_edge("M2->A1.0.q")
    with pytest.raises(InputError, match="Unknown node"):
        graph.parse_edge("B2->logits")


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm", "gemma3"])
def test_real_models_edge_identities(which: str, request: pytest.FixtureRequest) -> None:
    model: HookedModel = request.getfixturevalue(which)
    graph = EdgeGraph.from_model(model)
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupt = "When Mary and John went to the store, Mary gave a drink to"
    assert len(model.to_str_tokens(clean)) == len(model.to_str_tokens(corrupt))
    source, _ = node_outputs(model, corrupt, graph=graph)
    plain = model.run(clean).logits
    assert torch.equal(model.run(clean, [EdgePatch(graph.mask(keep=False), source)]).logits, plain)
    corrupt_logits = model.run(corrupt).logits
    dropped = model.run(clean, [EdgePatch(graph.mask(), source)]).logits
    assert_close(dropped, corrupt_logits, n_ops=64, scale=float(corrupt_logits.abs().max()))
