"""Edge attribution: exact edge patching equals a one-edge-per-forward loop; EAP's gradients are right (it equals
the exact effect in the linear regime); EAP-IG with one step is EAP; batching never changes a score."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny
from toys import edge_pairs as pairs
from toys import gap_metric as metric

from lmscope.interventions import HookedModel, InputError
from lmscope.interventions.tolerance import assert_close
from lmscope.probes.circuits import EdgeGraph, EdgePatch, edge_attribution, node_outputs


def test_exact_edge_patching_equals_one_forward_per_edge(tiny: HookedModel) -> None:
    """Batched edges, each forward starting at its edge's target layer, == a full forward per edge."""
    graph = EdgeGraph.from_model(tiny)
    clean, corrupt = pairs()
    edges = graph.edge_index[::9]
    got = edge_attribution(tiny, clean, corrupt, metric, method="exact", edges=edges, batch_size=6)
    source, _ = node_outputs(tiny, corrupt, graph=graph)
    base = metric(tiny.run(clean).logits[:, -1])
    for t, u in edges.tolist():
        mask = torch.ones(graph.n_targets, graph.n_nodes, dtype=torch.bool)
        mask[t, u] = False
        want = metric(tiny.run(clean, [EdgePatch(mask, source)]).logits[:, -1]) - base
        assert_close(got.per_pair[:, t, u], want, n_ops=16, scale=float(base.abs().max()),
                     msg=graph.edge_name(t, u))
    assert int(got.scored().sum()) == len(edges)
    assert got.top(3) and got.top(3)[0][0] in graph.edge_names


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gemma3_text", "gpt2"])
def test_eap_equals_the_exact_effect_in_the_linear_regime(arch: str, one_thread: None) -> None:
    """With a source a hair away from the clean node outputs, patching an edge is its first-order effect: EAP's
    score (gradient . difference) must match exact patching edge for edge."""
    model = HookedModel(build_tiny(arch))
    graph = EdgeGraph.from_model(model)
    clean, _ = pairs()
    outputs, _ = node_outputs(model, clean, graph=graph)
    gen = torch.Generator().manual_seed(0)
    source = outputs + 1e-3 * outputs.abs().mean() * torch.randn(outputs.shape, generator=gen).to(outputs.device)
    eap = edge_attribution(model, clean, clean, metric, method="eap", source=source)
    exact = edge_attribution(model, clean, clean, metric, method="exact", source=source, batch_size=32)
    a, b = eap.edge_values(), exact.edge_values()
    assert float((a - b).abs().max()) <= 0.02 * float(b.abs().max())  # second order in a 1e-3 perturbation
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.99


def test_eap_ig_with_one_step_is_eap_and_batching_changes_nothing(llama_tiny: HookedModel) -> None:
    clean, corrupt = pairs()
    eap = edge_attribution(llama_tiny, clean, corrupt, metric, method="eap", batch_size=1)
    one = edge_attribution(llama_tiny, clean, corrupt, metric, method="eap-ig", ig_steps=1, batch_size=16)
    assert_close(one.edge_values(), eap.edge_values(), n_ops=8)
    ig_a = edge_attribution(llama_tiny, clean, corrupt, metric, method="eap-ig", ig_steps=3, batch_size=1)
    ig_b = edge_attribution(llama_tiny, clean, corrupt, metric, method="eap-ig", ig_steps=3, batch_size=5)
    assert_close(ig_a.edge_values(), ig_b.edge_values(), n_ops=8)
    assert not torch.allclose(ig_a.edge_values(), eap.edge_values())  # the interpolation really happens
    assert one.clean_metric.shape == (2,) and eap.gap == pytest.approx(float((eap.corrupt_metric -
                                                                                eap.clean_metric).mean()))


def test_one_metric_per_pair_scores_each_pair_with_its_own(llama_tiny: HookedModel) -> None:
    clean, corrupt = pairs()

    def other(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 11] - logits[:, 3]

    both = edge_attribution(llama_tiny, clean, corrupt, [metric, other], method="eap")
    first = edge_attribution(llama_tiny, clean[:1], corrupt[:1], metric, method="eap")
    second = edge_attribution(llama_tiny, clean[1:], corrupt[1:], other, method="eap")
    valid = both.graph.valid
    assert_close(both.per_pair[0][valid], first.per_pair[0][valid], n_ops=8)
    assert_close(both.per_pair[1][valid], second.per_pair[0][valid], n_ops=8)


def test_bad_requests_are_refused(llama_tiny: HookedModel) -> None:
    clean, corrupt = pairs()
    with pytest.raises(InputError, match="method must be one of eap, eap-ig, exact"):
        edge_attribution(llama_tiny, clean, corrupt, metric, method="acdc")
    with pytest.raises(InputError, match="clean prompt has 7 tokens and the corrupt one 6"):
        edge_attribution(llama_tiny, clean, corrupt[:, 1:], metric)
    with pytest.raises(InputError, match="edges= selects the edges of method='exact'"):
        edge_attribution(llama_tiny, clean, corrupt, metric, method="eap", edges=["M0->logits"])
    with pytest.raises(InputError, match="does not feed"):
        edge_attribution(llama_tiny, clean, corrupt, metric, method="exact", edges=["M2->A1.0.q"])
    with pytest.raises(InputError, match="ig_steps must be a positive int"):
        edge_attribution(llama_tiny, clean, corrupt, metric, ig_steps=0)
