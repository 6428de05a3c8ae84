"""Path patching equals Wang et al.'s three-step procedure done by hand with Patch and Cache, and its limits:
every target as receiver == patching the senders' outputs; the logits as receiver == the direct effect."""

from __future__ import annotations

import pytest
from tiny_models import build_tiny
from toys import edge_pairs as pairs
from toys import gap_metric as metric

from lmscope.interventions import Cache, HookedModel, InputError, Patch
from lmscope.interventions.tolerance import assert_close
from lmscope.probes.circuits import EdgeGraph, node_outputs, path_patch

ARCHS = ["llama", "gpt_neox", "gpt2", "qwen3"]  # no post-attention norm: head_z patches are per-head edges


@pytest.mark.parametrize("arch", ARCHS)
def test_path_patching_equals_the_three_step_procedure(arch: str, one_thread: None) -> None:
    """Step 1: clean and corrupt runs. Step 2: senders from corrupt, every other head and MLP frozen at clean,
    record the receivers' queries. Step 3: the clean run with only those queries patched in."""
    model = HookedModel(build_tiny(arch))
    clean, corrupt = pairs()
    senders, layer = [(0, 1), (0, 3)], 2
    got = path_patch(model, clean, corrupt, metric, [f"A{a}.{b}" for a, b in senders], f"A{layer}.*.q")
    freeze = [Patch(f"head_z.{a}", corrupt, heads=[b]) for a, b in senders]
    others = [h for h in range(model.n_heads) if (0, h) not in senders]
    freeze += [Patch("head_z.0", clean, heads=others), Patch("head_z.1", clean), Patch("mlp_out.0", clean),
               Patch("mlp_out.1", clean)]
    queries = Cache(f"q.{layer}")
    model.run(clean, [*freeze, queries])
    patched = model.run(clean, [Patch(f"q.{layer}", queries[f"q.{layer}"])]).logits[:, -1]
    want = metric(patched) - metric(model.run(clean).logits[:, -1])
    assert_close(got.per_pair[0], want, n_ops=16, scale=float(metric(patched).abs().max()))
    assert float(want.abs().max()) > 1e-6  # a real effect, far above float32 rounding of the metric


def test_every_target_as_receiver_is_patching_the_senders(llama_tiny: HookedModel) -> None:
    clean, corrupt = pairs()
    got = path_patch(llama_tiny, clean, corrupt, metric, ["A1.2", "M0"], "*")
    patched = llama_tiny.run(clean, [Patch("head_z.1", corrupt, heads=[2]), Patch("mlp_out.0", corrupt)])
    want = metric(patched.logits[:, -1]).cpu() - got.clean_metric  # results come back on the CPU
    assert_close(got.per_pair[0], want, n_ops=16, scale=float(got.clean_metric.abs().max()))


def test_the_logits_as_receiver_is_the_direct_effect(llama_tiny: HookedModel) -> None:
    model = llama_tiny
    clean, corrupt = pairs()
    graph = EdgeGraph.from_model(model)
    got = path_patch(model, clean, corrupt, metric, "A2.*", "logits")
    cache = Cache(f"resid_post.{model.n_layers - 1}")
    model.run(clean, [cache])
    src, _ = node_outputs(model, corrupt, graph=graph)
    out, _ = node_outputs(model, clean, graph=graph)
    heads = slice(graph.layer_start(2), graph.layer_start(2) + graph.n_heads)
    stream = cache[f"resid_post.{model.n_layers - 1}"] - (out[:, heads] - src[:, heads]).sum(1)
    want = metric(model.decode_hidden(stream)[:, -1]).cpu() - got.clean_metric
    assert_close(got.per_pair[0], want, n_ops=16, scale=float(got.clean_metric.abs().max()))


def test_each_sender_in_one_batch_equals_each_alone(llama_tiny: HookedModel) -> None:
    clean, corrupt = pairs()
    each = path_patch(llama_tiny, clean, corrupt, metric, "A0.*", ["A2.*.q", "M1"], each_sender=True, batch_size=4)
    assert each.senders == [["A0.0"], ["A0.1"], ["A0.2"], ["A0.3"]] and each.per_pair.shape == (4, 2)
    for i, name in enumerate(["A0.0", "A0.1", "A0.2", "A0.3"]):
        alone = path_patch(llama_tiny, clean, corrupt, metric, name, ["A2.*.q", "M1"])
        assert_close(each.per_pair[i], alone.per_pair[0], n_ops=8)
    assert each.to_dict()["receivers"][-1] == "M1"


def test_bad_senders_and_receivers_are_refused(llama_tiny: HookedModel) -> None:
    clean, corrupt = pairs()
    with pytest.raises(InputError, match="No sender node matches 'A9.1'"):
        path_patch(llama_tiny, clean, corrupt, metric, "A9.1", "logits")
    with pytest.raises(InputError, match="No receiver target matches 'A1.0'"):
        path_patch(llama_tiny, clean, corrupt, metric, "A0.1", "A1.0")
    with pytest.raises(InputError, match="No sender feeds any receiver"):
        path_patch(llama_tiny, clean, corrupt, metric, "M2", "A1.*.q")
