"""Circuit-level sites (q/k/v, rot_q/rot_k, attn_scores, head_out, mlp_pre/mlp_post): exact identities on every
tiny architecture and on both real models, writes, refusals, padding and both backends."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest
import torch
from tiny_models import random_ids

from lmscope.interventions import Cache, Edit, HookedModel, SiteError
from lmscope.interventions.tolerance import assert_close

ATOL = 1e-5
NEW_KINDS = ("q", "k", "v", "rot_q", "rot_k", "attn_scores", "head_out", "mlp_pre", "mlp_post")
#: Test-side knowledge of HF's attention code: architectures (tiny configs) that normalise q/k before rotary,
#: so ``rot_q`` is not a rotation of ``q`` ...
QK_NORM = {"qwen3", "qwen3_moe", "olmo2", "gemma3_text", "stablelm"}
#: ... and whose q-norm spans all heads at once (OLMo-2 normalises the whole q_proj output), so a write to one
#: head's ``q`` rescales the others.
QK_NORM_ACROSS_HEADS = {"olmo2"}
MOE = {"mixtral", "qwen2_moe", "qwen3_moe"}


def ids(batch: int = 2, seq: int = 7, seed: int = 1) -> torch.Tensor:
    return random_ids((batch, seq), seed)


def model_type(model: HookedModel) -> str:
    return str(model.hf_model.config.model_type)


def has_qk_norm(model: HookedModel) -> bool:
    config = model.hf_model.config
    return model_type(model) in QK_NORM and (model_type(model) != "stablelm" or bool(config.qk_layernorm))


@contextmanager
def module_outputs(model: HookedModel, path: str) -> Iterator[list[torch.Tensor]]:
    """Record a module's own output (a copy: Falcon adds to its MLP output in place) by a raw HF hook."""
    outs: list[torch.Tensor] = []
    handle = model.module(path).register_forward_hook(
        lambda m, a, out: outs.append((out[0] if isinstance(out, tuple) else out).clone()))
    try:
        yield outs
    finally:
        handle.remove()


def expand_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[b, pos, n_kv, d] -> [b, pos, n_heads, d] with HF's grouped-query mapping (head h reads kv h // group)."""
    return x.repeat_interleave(n_heads // x.shape[2], dim=2)


def test_new_sites_listed_with_shapes(tiny: HookedModel) -> None:
    tokens = ids()
    kinds = [k for k in NEW_KINDS if k in tiny.available_kinds]
    c = tiny.run(tokens, [Cache([f"{k}.*" for k in kinds])]).cache
    for kind in kinds:
        assert tiny.sites(f"{kind}.*") == [f"{kind}.{i}" for i in range(tiny.n_layers)]
        value = c[f"{kind}.1"]
        if kind == "attn_scores":
            assert value.shape == (2, tiny.n_heads, 7, 7)
        else:
            assert value.shape == (2, 7, *tiny.site_shape(f"{kind}.1"))
    assert ("mlp_post" in tiny.available_kinds) == (model_type(tiny) not in MOE)


def test_refusals_name_what_is_available(tiny: HookedModel) -> None:
    for kind, why in (("mlp_post", "mixture of experts"), ("mlp_pre", "mixture of experts"),
                      ("attn_scores", "computes its scores inline")):
        if kind not in tiny.available_kinds:
            with pytest.raises(SiteError, match=f"{why}.*Available kinds: .*resid_pre"):
                tiny.run(ids(), [Cache(f"{kind}.0")])
    with pytest.raises(SiteError, match="Did you mean 'rot_q'"):
        tiny.resolve("rot_qq.0")


def test_softmax_of_scores_is_pattern(tiny: HookedModel) -> None:
    if "attn_scores" not in tiny.available_kinds:
        pytest.skip("no attn_scores here (test_refusals_name_what_is_available checks the error)")
    c = tiny.run(ids(), [Cache(["attn_scores.*", "attn_pattern.*"])]).cache
    for layer in range(tiny.n_layers):
        scores = c[f"attn_scores.{layer}"]
        assert torch.allclose(scores.softmax(-1), c[f"attn_pattern.{layer}"], atol=ATOL, rtol=1e-5)
        future = torch.ones(7, 7, dtype=torch.bool, device=scores.device).triu(1)
        assert torch.all(scores[..., future] < -1e30)  # the causal mask is included


def test_scores_are_scaled_dot_products_of_rot_q_rot_k(tiny: HookedModel) -> None:
    """Unmasked scores = c * rot_q . rot_k for one constant c (the model's scale): the rot sites are what the
    dot product uses, keys shared across grouped-query heads."""
    if "attn_scores" not in tiny.available_kinds or getattr(tiny.hf_model.config, "attn_logit_softcapping", None):
        pytest.skip("no scores, or scores soft-capped (checked against the pattern instead)")
    c = tiny.run(ids(), [Cache(["attn_scores.*", "rot_q.*", "rot_k.*"])]).cache
    for layer in range(tiny.n_layers):
        q, k = c[f"rot_q.{layer}"], expand_kv(c[f"rot_k.{layer}"], tiny.n_heads)
        dots = torch.einsum("bqhd,bkhd->bhqk", q, k)
        scores = c[f"attn_scores.{layer}"]
        seen = scores > -1e30
        scale = (scores[seen] * dots[seen]).sum() / dots[seen].pow(2).sum()
        assert torch.allclose(scores[seen], scale * dots[seen], atol=ATOL, rtol=1e-4)


def test_rotary_preserves_norms_and_position_zero(tiny: HookedModel) -> None:
    """Without q/k norms rot_q is q rotated per position: equal norms, and equal values at position 0 (angle 0)."""
    if has_qk_norm(tiny):
        pytest.skip("q/k norms sit between q and rot_q")
    c = tiny.run(ids(), [Cache(["q.*", "k.*", "rot_q.*", "rot_k.*"])]).cache
    for layer in range(tiny.n_layers):
        for raw, rot in (("q", "rot_q"), ("k", "rot_k")):
            a, b = c[f"{raw}.{layer}"], c[f"{rot}.{layer}"]
            assert torch.allclose(a.norm(dim=-1), b.norm(dim=-1), atol=ATOL, rtol=1e-5)
            assert torch.allclose(a[:, 0], b[:, 0], atol=ATOL, rtol=1e-5)


def test_pattern_times_v_is_head_z(tiny: HookedModel) -> None:
    if "attn_pattern" not in tiny.available_kinds:
        pytest.skip("no attn_pattern here")
    c = tiny.run(ids(), [Cache(["attn_pattern.*", "v.*", "head_z.*"])]).cache
    for layer in range(tiny.n_layers):
        v = expand_kv(c[f"v.{layer}"], tiny.n_heads)
        z = torch.einsum("bhqk,bkhd->bqhd", c[f"attn_pattern.{layer}"], v)
        assert torch.allclose(z, c[f"head_z.{layer}"], atol=ATOL, rtol=1e-5)


def test_head_out_sums_to_output_projection(tiny: HookedModel) -> None:
    """Σ_h head_out + b_O = the output projection's output (= attn_out unless a post-attention norm follows)."""
    tokens = ids()
    for layer in range(tiny.n_layers):
        o_proj = f"{tiny.arch.layers}.{layer}.{tiny.arch.attn}.{tiny.arch.o_proj}"
        with module_outputs(tiny, o_proj) as outs:
            c = tiny.run(tokens, [Cache([f"head_out.{layer}", f"head_z.{layer}", f"attn_out.{layer}"])]).cache
        _, b_o = tiny.output_projection(layer)
        total = c[f"head_out.{layer}"].sum(2) + (b_o if b_o is not None else 0)
        assert torch.allclose(total, outs[0], atol=ATOL, rtol=1e-5)
        if tiny.arch.attn_post_norm is None:
            assert torch.allclose(total, c[f"attn_out.{layer}"], atol=ATOL, rtol=1e-5)


def test_head_out_write_is_exact(tiny: HookedModel) -> None:
    """Zeroing one head's head_out equals ablating that head's head_z; an unchanged write changes nothing."""
    tokens, layer, head = ids(), 1, 2

    def zero_head(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, :, head] = 0
        return x
    by_out = tiny.run(tokens, [Edit(f"head_out.{layer}", zero_head)]).logits
    by_z = tiny.run(tokens, [Edit(f"head_z.{layer}", zero_head)]).logits
    assert torch.allclose(by_out, by_z, atol=ATOL, rtol=1e-5)
    assert torch.equal(tiny.run(tokens, [Edit(f"head_out.{layer}", lambda v: v.clone())]).logits,
                       tiny.run(tokens).logits)


def test_mlp_post_through_w_out_is_mlp_output(tiny: HookedModel) -> None:
    """mlp_post @ W_out + b_out = the MLP module's output (= mlp_out unless a post-MLP norm follows)."""
    if "mlp_post" not in tiny.available_kinds:
        pytest.skip("MoE: no mlp_post (test_refusals_name_what_is_available checks the error)")
    tokens = ids()
    for layer in range(tiny.n_layers):
        with module_outputs(tiny, f"{tiny.arch.layers}.{layer}.{tiny.arch.mlp}") as outs:
            c = tiny.run(tokens, [Cache([f"mlp_post.{layer}", f"mlp_out.{layer}"])]).cache
        w_out, b_out = tiny.mlp_output_projection(layer)
        assert w_out.shape == (tiny.d_mlp, tiny.d_model)
        total = c[f"mlp_post.{layer}"] @ w_out + (b_out if b_out is not None else 0)
        assert torch.allclose(total, outs[0], atol=ATOL, rtol=1e-5)
        if tiny.arch.mlp_post_norm is None:
            assert torch.allclose(total, c[f"mlp_out.{layer}"], atol=ATOL, rtol=1e-5)


def test_zero_mlp_pre_zeroes_the_neurons(tiny: HookedModel) -> None:
    """act(0) = 0 for every activation here, so zeroing mlp_pre (the gate) zeroes mlp_post: the write lands in
    the right slice (Phi-3's fused gate/up keeps its up half) and the MLP's output is its bias alone."""
    if "mlp_pre" not in tiny.available_kinds:
        pytest.skip("MoE: no mlp_pre")
    layer = 1
    c = tiny.run(ids(), [Edit(f"mlp_pre.{layer}", torch.zeros_like), Cache([f"mlp_pre.{layer}",
                                                                            f"mlp_post.{layer}"])]).cache
    assert torch.all(c[f"mlp_pre.{layer}"] == 0) and torch.all(c[f"mlp_post.{layer}"] == 0)
    base = tiny.run(ids(), [Cache(f"mlp_post.{layer}")]).cache[f"mlp_post.{layer}"]
    assert not torch.all(base == 0)


def test_q_write_of_one_head_changes_only_that_head(tiny: HookedModel) -> None:
    """A write to one head's q changes that head's pattern (or head_z) and nothing upstream or beside it."""
    tokens, layer, head = ids(), 1, 1
    noise = torch.randn(2, 7, tiny.d_head, generator=torch.Generator().manual_seed(5)).to(tokens.device)

    def bump(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, :, head] += noise
        return x
    watched = ["resid_pre.1", "k.1", "v.1", "rot_k.1", "q.1", "head_z.1", "resid_post.0"]
    if "attn_pattern" in tiny.available_kinds:
        watched.append("attn_pattern.1")
    base = tiny.run(tokens, [Cache(watched)]).cache
    new = tiny.run(tokens, [Edit(f"q.{layer}", bump), Cache(watched)]).cache
    for name in ("resid_pre.1", "k.1", "v.1", "rot_k.1", "resid_post.0"):  # upstream of the write: untouched
        assert torch.equal(base[name], new[name]), name
    assert torch.allclose(new["q.1"], bump(base["q.1"]), atol=0, rtol=0)
    other = [h for h in range(tiny.n_heads) if h != head]
    for name in ("head_z.1", "attn_pattern.1"):
        if name not in watched:
            continue
        head_axis = 2 if name.startswith("head_z") else 1
        changed = base[name].select(head_axis, head) - new[name].select(head_axis, head)
        assert changed.abs().max() > 1e-4, name
        if model_type(tiny) not in QK_NORM_ACROSS_HEADS:
            idx = torch.tensor(other, device=tokens.device)
            assert torch.allclose(base[name].index_select(head_axis, idx), new[name].index_select(head_axis, idx),
                                  atol=ATOL, rtol=1e-5), name


def test_rot_q_write_of_one_head_changes_only_that_head(tiny: HookedModel) -> None:
    """After the q-norm a one-head write stays in its head on every architecture (OLMo-2 included)."""
    tokens, layer, head = ids(), 1, 1

    def bump(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, :, head] *= 3
        return x
    base = tiny.run(tokens, [Cache(f"head_z.{layer}")]).cache[f"head_z.{layer}"]
    new = tiny.run(tokens, [Edit(f"rot_q.{layer}", bump), Cache(f"head_z.{layer}")]).cache[f"head_z.{layer}"]
    other = [h for h in range(tiny.n_heads) if h != head]
    assert torch.allclose(base[:, :, other], new[:, :, other], atol=ATOL, rtol=1e-5)
    assert (base[:, 1:, head] - new[:, 1:, head]).abs().max() > 1e-4  # position 0 attends to itself alone


def test_identity_writes_leave_logits_unchanged(tiny: HookedModel) -> None:
    """Writing every new site back unchanged is exact: bit for bit the plain run (the eager-attention sites:
    bit for bit the same run with that site only read)."""
    tokens = ids()
    plain = tiny.run(tokens).logits
    for kind in NEW_KINDS:
        if kind not in tiny.available_kinds:
            continue
        written = tiny.run(tokens, [Edit(f"{kind}.*", lambda v: v.clone())]).logits
        reference = tiny.run(tokens, [Cache(f"{kind}.*")]).logits if kind == "attn_scores" else plain
        assert torch.equal(written, reference), kind
    kinds = [f"{k}.*" for k in NEW_KINDS if k in tiny.available_kinds and k != "attn_scores"]
    assert torch.equal(tiny.run(tokens, [Cache(kinds)]).logits, plain)  # caching them all changes nothing


@pytest.mark.parametrize("side", ["left", "right"])
def test_new_sites_padded_batch_equals_unbatched(tiny: HookedModel, side: str) -> None:
    seqs = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]
    names = [f"{k}.1" for k in NEW_KINDS if k in tiny.available_kinds and k != "attn_scores"]
    batched = tiny.run(seqs, [Cache(names + (["attn_scores.1"] if "attn_scores" in tiny.available_kinds
                                             else []))], padding_side=side)
    for i, seq in enumerate(seqs):
        single = tiny.run([seq], [Cache(names + (["attn_scores.1"] if "attn_scores" in tiny.available_kinds
                                                 else []))])
        for name in names:
            assert torch.allclose(batched.cache.unpad(name, i), single.cache[name][0], atol=ATOL, rtol=1e-5), name
        if "attn_scores" in tiny.available_kinds:
            keep = batched.batch.attention_mask[i].bool()
            scores = batched.cache["attn_scores.1"][i][:, keep][:, :, keep]
            ref = single.cache["attn_scores.1"][0]
            seen = ref > -1e30
            assert torch.equal(seen, scores > -1e30)
            assert torch.allclose(scores[seen], ref[seen], atol=ATOL, rtol=1e-5)


def test_rot_k_under_generation_is_each_steps_own_keys(llama_tiny: HookedModel) -> None:
    """With a KV cache each forward's rot_k holds its own tokens' keys: concatenated they equal one full forward."""
    prompt = [[3, 4, 5, 6]]
    with llama_tiny.apply(cache := Cache(["rot_k.1", "rot_q.1", "q.1"])):
        out = llama_tiny.generate(prompt, max_new_tokens=3)
    full = llama_tiny.run(out.tokens, [Cache(["rot_k.1", "rot_q.1", "q.1"])]).cache
    fed = out.tokens.shape[1] - 1  # the last generated token is never fed back
    for name in ("rot_k.1", "rot_q.1", "q.1"):
        assert cache[name].shape == full[name][:, :fed].shape
        assert torch.allclose(cache[name], full[name][:, :fed], atol=ATOL, rtol=1e-5), name


def test_nnsight_backend_agrees_and_refuses_attention_sites(tiny: HookedModel) -> None:
    pytest.importorskip("nnsight")
    tokens = ids()
    names = [f"{k}.1" for k in ("q", "k", "v", "head_out", "mlp_pre", "mlp_post") if k in tiny.available_kinds]
    hooks = tiny.run(tokens, [Cache(names)])
    nn_run = tiny.run(tokens, [Cache(names)], backend="nnsight")
    for name in names:
        assert torch.allclose(hooks.cache[name], nn_run.cache[name], atol=ATOL, rtol=1e-5), name

    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2
    edits = [Edit(n, double) for n in names]
    assert torch.allclose(tiny.run(tokens, edits).logits, tiny.run(tokens, edits, backend="nnsight").logits,
                          atol=1e-4, rtol=1e-4)
    with pytest.raises(SiteError, match="rot_q is not available with backend='nnsight'.*nnsight gives: embed"):
        tiny.run(tokens, [Cache("rot_q.0")], backend="nnsight")


def test_falcon_grouped_qkv_layout() -> None:
    """Falcon's new_decoder_architecture packs [queries of a group, key, value] per kv group; with ALiBi (no
    rotary, no norms) q = rot_q and k = rot_k exactly, so the split is checked element for element."""
    from transformers import AutoModelForCausalLM, FalconConfig

    config = FalconConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_kv_heads=2, new_decoder_architecture=True, alibi=True, max_position_embeddings=64)
    torch.manual_seed(0)
    model = HookedModel(AutoModelForCausalLM.from_config(config).eval())
    tokens = torch.randint(1, 97, (2, 5), generator=torch.Generator().manual_seed(0))
    c = model.run(tokens, [Cache(["q.1", "k.1", "v.1", "rot_q.1", "rot_k.1"])]).cache
    assert c["k.1"].shape == (2, 5, 2, 8) and c["q.1"].shape == (2, 5, 4, 8)
    assert torch.equal(c["q.1"], c["rot_q.1"]) and torch.equal(c["k.1"], c["rot_k.1"])
    plain = model.run(tokens).logits
    for kind in ("q", "k", "v"):
        assert torch.equal(model.run(tokens, [Edit(f"{kind}.*", lambda v: v.clone())]).logits, plain)


@pytest.mark.slow
def test_real_model_identities(real_model) -> None:
    """The same identities on SmolLM2 (LLaMA) and Gemma 3 (q/k norms, sandwich norms, soft-capping), in each dtype
    the fixtures load: references are computed in float32 from the cached values, within the model dtype's
    rounding (:mod:`lmscope.interventions.tolerance`); the unchanged writes are exact in every dtype."""
    model, prompt, _ = real_model
    layer, dtype = model.n_layers // 2, model.dtype
    names = [f"{k}.{layer}" for k in NEW_KINDS] + [f"attn_pattern.{layer}", f"head_z.{layer}", f"mlp_out.{layer}"]
    o_proj = f"{model.arch.layers}.{layer}.{model.arch.attn}.{model.arch.o_proj}"
    with module_outputs(model, o_proj) as o_out, \
            module_outputs(model, f"{model.arch.layers}.{layer}.{model.arch.mlp}") as mlp_out:
        res = model.run([prompt, "Hello"], [Cache(names)])
    c = {name: value.float() for name, value in ((n, res.cache[n]) for n in names)}
    assert_close(c[f"attn_scores.{layer}"].softmax(-1), c[f"attn_pattern.{layer}"], dtype, scale=1.0,
                 msg="softmax(scores) vs pattern")
    z = torch.einsum("bhqk,bkhd->bqhd", c[f"attn_pattern.{layer}"], expand_kv(c[f"v.{layer}"], model.n_heads))
    assert_close(z, c[f"head_z.{layer}"], dtype, msg="pattern @ v vs head_z")
    _, b_o = model.output_projection(layer)
    total = c[f"head_out.{layer}"].sum(2) + (b_o.float() if b_o is not None else 0)
    assert_close(total, o_out[0], dtype, msg="sum of head_out vs the output projection")
    w_out, b_out = model.mlp_output_projection(layer)
    neurons = c[f"mlp_post.{layer}"] @ w_out.float() + (b_out.float() if b_out is not None else 0)
    assert_close(neurons, mlp_out[0], dtype, msg="mlp_post @ W_out vs the MLP output")
    plain = model.run([prompt, "Hello"]).logits
    for kind in ("q", "k", "v", "rot_q", "rot_k", "mlp_pre", "mlp_post", "head_out"):
        assert torch.equal(model.run([prompt, "Hello"], [Edit(f"{kind}.{layer}", lambda v: v.clone())]).logits,
                           plain), kind
