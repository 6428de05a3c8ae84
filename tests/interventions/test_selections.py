"""``neurons=`` on mlp_pre/mlp_post and ``heads=`` on every per-head site, for Ablate, Patch and Cache (issue 29).

Each selection is checked against the same edit written by hand on the whole site; on the grouped-query tiny
Llama (4 query heads, 2 KV heads) ``heads=`` on k/v/rot_k counts KV heads and changes exactly the query heads
of that group.
"""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import Ablate, Cache, Edit, HookedModel, InputError, Intervention, Patch

TOKENS = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
SOURCE = [[11, 12, 13, 14, 15], [16, 17, 18, 19, 20]]
#: per-head kinds with a [batch, pos, heads, ...] value (the attention maps are read-only for these two)
WRITABLE_HEAD_KINDS = ("q", "k", "v", "rot_q", "rot_k", "head_z", "head_out")


def _by_hand(model: HookedModel, site: str, fn) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return model.run(TOKENS, [Edit(site, fn)]).logits


def test_ablate_neurons_equals_zeroing_them_by_hand(llama_tiny: HookedModel) -> None:
    def zero(v: torch.Tensor) -> torch.Tensor:
        out = v.clone()
        out[:, :, [5, 47]] = 0
        return out
    for kind in ("mlp_post", "mlp_pre"):
        got = llama_tiny.run(TOKENS, [Ablate(f"{kind}.1", neurons=[5, -1]), Cache(f"{kind}.1")])
        assert torch.equal(got.logits, _by_hand(llama_tiny, f"{kind}.1", zero))
        value = got.cache[f"{kind}.1"]
        assert torch.all(value[:, :, [5, 47]] == 0) and torch.all(value[:, :, :5] != 0)


def test_mean_ablation_of_neurons_uses_the_reference_mean_of_those_neurons(llama_tiny: HookedModel) -> None:
    ref = llama_tiny.run(SOURCE, [Cache("mlp_post.0")]).cache["mlp_post.0"]
    mean = ref.flatten(0, 1).mean(0)

    def by_hand(v: torch.Tensor) -> torch.Tensor:
        out = v.clone()
        out[:, -1, 3] = mean[3]
        return out
    got = llama_tiny.run(TOKENS, [Ablate("mlp_post.0", neurons=3, how="mean", reference=SOURCE, positions=-1)])
    torch.testing.assert_close(got.logits, _by_hand(llama_tiny, "mlp_post.0", by_hand), atol=1e-6, rtol=0)


def test_patch_neurons_writes_only_those_neurons(llama_tiny: HookedModel) -> None:
    src = llama_tiny.run(SOURCE, [Cache("mlp_post.2")]).cache["mlp_post.2"]

    def by_hand(v: torch.Tensor) -> torch.Tensor:
        out = v.clone()
        out[:, [1, 3], 7] = src[:, [1, 3], 7]
        out[:, [1, 3], 0] = src[:, [1, 3], 0]
        return out
    got = llama_tiny.run(TOKENS, [Patch("mlp_post.2", SOURCE, positions=[1, 3], neurons=[7, 0])])
    assert torch.equal(got.logits, _by_hand(llama_tiny, "mlp_post.2", by_hand))


def test_cache_neurons_records_them_in_the_order_given(llama_tiny: HookedModel) -> None:
    full = llama_tiny.run(TOKENS, [Cache(["mlp_pre.1", "mlp_post.1"])]).cache
    cache = Cache(["mlp_pre.1", "mlp_post.1"], neurons=[9, -1, 2, 9])
    llama_tiny.run(TOKENS, [cache])
    for name in ("mlp_pre.1", "mlp_post.1"):
        assert cache.selected_neurons(name) == [9, 47, 2] and cache.selected_heads(name) is None
        assert torch.equal(cache[name], full[name][:, :, [9, 47, 2]])


@pytest.mark.parametrize("kind", WRITABLE_HEAD_KINDS)
def test_heads_on_every_writable_per_head_site_equal_the_edit_by_hand(llama_tiny: HookedModel, kind: str) -> None:
    site = f"{kind}.1"
    full = llama_tiny.run(TOKENS, [Cache(site)]).cache[site]
    src = llama_tiny.run(SOURCE, [Cache(site)]).cache[site]

    def zero(v: torch.Tensor) -> torch.Tensor:
        out = v.clone()
        out[:, -1, 1] = 0
        return out

    def patch(v: torch.Tensor) -> torch.Tensor:
        out = v.clone()
        out[:, :, 1] = src[:, :, 1]
        return out
    ablated = llama_tiny.run(TOKENS, [Ablate(site, heads=[1], positions=-1)]).logits
    torch.testing.assert_close(ablated, _by_hand(llama_tiny, site, zero), atol=1e-6, rtol=0)
    patched = llama_tiny.run(TOKENS, [Patch(site, SOURCE, heads=1)]).logits
    torch.testing.assert_close(patched, _by_hand(llama_tiny, site, patch), atol=1e-6, rtol=0)
    assert not torch.allclose(patched, llama_tiny.run(TOKENS).logits)  # the patch really changes something
    cache = Cache(site, heads=[1, 0])
    llama_tiny.run(TOKENS, [cache])
    assert torch.equal(cache[site], full[:, :, [1, 0]])


@pytest.mark.parametrize("kind", ["attn_scores", "attn_pattern"])
def test_cache_heads_of_attention_maps(llama_tiny: HookedModel, kind: str) -> None:
    full = llama_tiny.run(TOKENS, [Cache(f"{kind}.2")]).cache[f"{kind}.2"]  # [batch, heads, query, key]
    cache = Cache(f"{kind}.2", -1, heads=[3, 0])
    llama_tiny.run(TOKENS, [cache])
    assert torch.equal(cache[f"{kind}.2"], full[:, [3, 0], -1:])
    with pytest.raises(InputError, match="Patch does not write attn_scores or attn_pattern"):
        llama_tiny.run(TOKENS, [Patch(f"{kind}.2", SOURCE, heads=[0])])
    with pytest.raises(InputError, match=f"Ablate does not act on {kind}: a mean or resampled attention row"):
        llama_tiny.run(TOKENS, [Ablate(f"{kind}.2", heads=[0])])


def test_kv_heads_patch_their_whole_query_group(llama_tiny: HookedModel) -> None:
    """heads= on v counts KV heads; KV head 1 serves query heads 2 and 3, and only they change."""
    assert (llama_tiny.n_heads, llama_tiny.n_kv_heads) == (4, 2)
    base = llama_tiny.run(TOKENS, [Cache("head_z.1")]).cache["head_z.1"]
    for kind in ("k", "v", "rot_k"):
        patch = Patch(f"{kind}.1", SOURCE, heads=[1])
        z = llama_tiny.run(TOKENS, [patch, Cache("head_z.1")]).cache["head_z.1"]
        assert patch.query_heads(f"{kind}.1") == [2, 3] and patch.selected_heads(f"{kind}.1") == [1]
        assert torch.equal(z[:, :, :2], base[:, :, :2])
        assert not torch.allclose(z[:, 1:, 2], base[:, 1:, 2]) and not torch.allclose(z[:, 1:, 3], base[:, 1:, 3])
    ablate = Ablate("q.1", heads=[3])
    llama_tiny.run(TOKENS, [ablate])
    assert ablate.query_heads("q.1") == [3]


def test_a_query_head_index_on_a_kv_site_is_explained(llama_tiny: HookedModel) -> None:
    with pytest.raises(InputError, match=r"Head index 3 out of range for v.1: this model has 2 KV heads \(valid "
                                         r"0..1\); heads= on k/v/rot_k counts KV heads, as the tensor and "
                                         r"TransformerLens's hook_k/hook_v do; query head 3 reads KV head 1 \(each "
                                         r"KV head serves 2 query heads\)"):
        llama_tiny.run(TOKENS, [Cache("v.1", heads=[3])])


@pytest.mark.parametrize("make, message", [
    (lambda: Ablate("mlp_out.1", neurons=[3]), r"neurons= selects MLP neurons, the last axis of mlp_pre and "
                                               r"mlp_post \[batch, pos, d_mlp\]; mlp_out.1 has none"),
    (lambda: Patch("head_z.1", SOURCE, neurons=[3]), "head_z.1 has none"),
    (lambda: Cache("mlp_post.0", neurons=[48]), r"Neuron index 48 out of range: this model's MLPs have 48 neurons "
                                                r"\(valid 0..47, or -48..-1 from the end\)"),
    (lambda: Ablate("mlp_post.0", neurons=-49), "Neuron index -49 out of range"),
    (lambda: Ablate(neurons=[3]), r"Ablate\(neurons=...\) selects neurons of the named site\(s\)"),
    (lambda: Cache("mlp_post.0", neurons=[]), "neurons must be an int or a non-empty list of ints"),
    (lambda: Cache("mlp_post.0", neurons=[1.5]), "neurons must be an int or a non-empty list of ints"),
    (lambda: Ablate("mlp_post.0", heads=[1], neurons=[2]), "takes heads= or neurons=, not both"),
    (lambda: Cache("mlp_post.0", heads=[1]), "heads= selects heads of a per-head site"),
])
def test_bad_neuron_selections_are_refused(llama_tiny: HookedModel, make, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=message):
        llama_tiny.run(TOKENS, [make()])


@pytest.mark.parametrize("make", [
    lambda: Ablate("mlp_post.1", neurons=[3, 7], how="mean"),
    lambda: Patch("mlp_pre.2", SOURCE, neurons=5, positions=-1),
    lambda: Patch("v.1", SOURCE, heads=[1]),
    lambda: Cache(["mlp_post.0", "mlp_post.2"], neurons=[1, 0]),
    lambda: Cache("attn_pattern.1", heads=[2]),
])
def test_selections_round_trip(llama_tiny: HookedModel, make, tmp_path) -> None:  # type: ignore[no-untyped-def]
    iv = make()
    iv.save(tmp_path / "iv")
    back = Intervention.load(tmp_path / "iv")
    assert back == iv and back.heads == iv.heads and back.neurons == iv.neurons
    if not isinstance(iv, Cache):
        assert torch.equal(llama_tiny.run(TOKENS, [back]).logits, llama_tiny.run(TOKENS, [iv]).logits)


def test_selections_on_the_nnsight_backend_equal_hooks(llama_tiny: HookedModel) -> None:
    pytest.importorskip("nnsight", reason="the nnsight extra (pip install 'lmscope[nnsight]')")
    ivs = [Ablate("mlp_post.0", neurons=[1, 4], how="mean"), Patch("v.1", SOURCE, heads=[1], positions=-1),
           Cache("mlp_pre.2", neurons=[3, 0]), Cache("k.2", heads=[1])]
    hooks = llama_tiny.run(TOKENS, ivs)
    nns = llama_tiny.run(TOKENS, ivs, backend="nnsight")
    torch.testing.assert_close(nns.logits, hooks.logits, atol=1e-5, rtol=0)
    for name in ("mlp_pre.2", "k.2"):
        torch.testing.assert_close(nns.cache[name], hooks.cache[name], atol=1e-5, rtol=0)
