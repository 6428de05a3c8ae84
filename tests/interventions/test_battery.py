"""The architecture battery: exact equivalences every supported architecture must satisfy."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest
import torch
from tiny_models import on_device, random_ids

from lmscope.interventions import Ablate, Cache, Edit, HookedModel, Patch, SiteError, Steer
from lmscope.interventions.adapter_checks import adapter_failures

ATOL = 1e-5
#: Test-side knowledge of HF's layer code, independent of the adapter table: the module (relative to a
#: decoder layer) whose input is the residual stream between attention and MLP (``resid_mid``).
MLP_READS_RESID_MID = {"gemma2": "pre_feedforward_layernorm", "gemma3_text": "pre_feedforward_layernorm",
                       "olmo2": "mlp", "gpt2": "ln_2"}


@contextmanager
def o_proj_outputs(model: HookedModel, layer: int, replace=None) -> Iterator[list[torch.Tensor]]:
    """Record (and optionally replace) the attention output projection's own output, by a raw HF hook."""
    outs: list[torch.Tensor] = []

    def hook(module, args, output):
        if replace is not None:
            output = replace(output)
        outs.append(output)
        return output
    o_proj = model.module(f"{model.arch.layers}.{layer}.{model.arch.attn}.{model.arch.o_proj}")
    handle = o_proj.register_forward_hook(hook)
    try:
        yield outs
    finally:
        handle.remove()


def sliding_layers(model: HookedModel) -> list[int]:
    """Layers whose attention uses a sliding window (from the HF config)."""
    config = model.hf_model.config
    if not getattr(config, "sliding_window", None):
        return []
    types = getattr(config, "layer_types", None)
    if types is None:
        return list(range(model.n_layers))
    return [i for i, t in enumerate(types) if t == "sliding_attention"]


def ids(batch: int = 2, seq: int = 7, seed: int = 1) -> torch.Tensor:
    return random_ids((batch, seq), seed)


def hf_logits(model: HookedModel, tokens: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model.hf_model(tokens, **kw).logits


def test_noop_run_equals_hf(tiny: HookedModel) -> None:
    tokens = ids()
    assert torch.allclose(tiny.run(tokens).logits, hf_logits(tiny, tokens), atol=ATOL, rtol=0)


def test_cache_everything_leaves_logits_unchanged(tiny: HookedModel) -> None:
    tokens = ids()
    result = tiny.run(tokens, [Cache(tiny.sites())])
    assert torch.equal(result.logits, tiny.run(tokens).logits) or torch.allclose(
        result.logits, hf_logits(tiny, tokens), atol=ATOL, rtol=0)
    assert len(result.cache) == len(tiny.sites())


def test_last_resid_post_through_final_norm_is_hf_final_hidden(tiny: HookedModel) -> None:
    tokens = ids()
    result = tiny.run(tokens, [Cache(["resid_post.-1", "final_norm"])])
    with torch.no_grad():
        out = tiny.hf_model(tokens, output_hidden_states=True)
        final = tiny.final_norm(result.cache["resid_post.-1"])
    assert torch.allclose(final, out.hidden_states[-1], atol=ATOL, rtol=0)
    assert torch.allclose(result.cache["final_norm"], out.hidden_states[-1], atol=ATOL, rtol=0)
    assert torch.allclose(tiny.decode_hidden(result.cache["resid_post.-1"]), result.logits, atol=ATOL, rtol=0)


def test_residual_bookkeeping(tiny: HookedModel) -> None:
    """resid_post = resid_pre + attn_out + mlp_out (and resid_mid = resid_pre + attn_out where it exists)."""
    tokens = ids()
    kinds = ["embed", "resid_pre.*", "attn_out.*", "mlp_out.*", "resid_post.*", "logits"]
    has_mid = "resid_mid" in tiny.available_kinds
    result = tiny.run(tokens, [Cache(kinds + (["resid_mid.*"] if has_mid else []))])
    c = result.cache
    for layer in range(tiny.n_layers):
        pre, attn, mlp = c[f"resid_pre.{layer}"], c[f"attn_out.{layer}"], c[f"mlp_out.{layer}"]
        assert torch.allclose(pre + attn + mlp, c[f"resid_post.{layer}"], atol=ATOL, rtol=0)
        if has_mid:
            assert torch.allclose(pre + attn, c[f"resid_mid.{layer}"], atol=ATOL, rtol=0)
            assert torch.allclose(c[f"resid_mid.{layer}"] + mlp, c[f"resid_post.{layer}"], atol=ATOL, rtol=0)
        if layer + 1 < tiny.n_layers:  # resid_pre of layer L+1 is resid_post of layer L
            assert torch.equal(c[f"resid_pre.{layer + 1}"], c[f"resid_post.{layer}"])
    if tiny.arch.position_embed is None:  # embed includes any embedding scale (Gemma) and starts the residual
        assert torch.equal(c["embed"], c["resid_pre.0"])
    # the logits site is what the model returns (after Cohere's logit scale / Gemma's soft-cap)
    assert torch.equal(c["logits"], result.logits)


def test_resid_mid_write_lands_where_residual_is_formed(tiny: HookedModel) -> None:
    """Steering resid_mid.L equals adding v to HF's residual after attention: the MLP reads it, the sum keeps it."""
    tokens = ids()
    layer = 1
    if "resid_mid" not in tiny.available_kinds:
        with pytest.raises(SiteError, match="parallel residual"):
            tiny.run(tokens, [Cache(f"resid_mid.{layer}")])
        pytest.skip(f"{tiny.arch.name} has a parallel residual: no resid_mid to write (its SiteError was checked)")
    v = on_device(torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(3)))
    steered = tiny.run(tokens, [Steer(f"resid_mid.{layer}", v)]).logits
    name = next((MLP_READS_RESID_MID[t] for t in tiny.arch.model_types if t in MLP_READS_RESID_MID),
                "post_attention_layernorm")
    reader = tiny.module(f"{tiny.arch.layers}.{layer}.{name}")
    block = tiny.layer_module(layer)
    handles = [reader.register_forward_pre_hook(lambda m, args: (args[0] + v, *args[1:])),
               block.register_forward_hook(lambda m, a, out: (out[0] + v, *out[1:]) if isinstance(out, tuple)
                                           else out + v)]
    try:
        with torch.no_grad():
            by_hand = tiny.hf_model(tokens).logits
    finally:
        for h in handles:
            h.remove()
    assert torch.allclose(steered, by_hand, atol=ATOL, rtol=0)
    assert not torch.allclose(steered, tiny.run(tokens).logits, atol=1e-4)


def test_adapter_passes_its_probe_checks(tiny: HookedModel) -> None:
    """The gate inferred adapters must pass holds for every registered adapter."""
    assert adapter_failures(tiny) == []


def test_head_z_projects_to_output_projection(tiny: HookedModel) -> None:
    """head_z @ W_O + b_O is the output projection's own output (before any post-attention norm)."""
    tokens = ids()
    for layer in range(tiny.n_layers):
        with o_proj_outputs(tiny, layer) as outs:
            c = tiny.run(tokens, [Cache([f"head_z.{layer}", f"attn_out.{layer}"])]).cache
        w_o, b_o = tiny.output_projection(layer)
        per_head = torch.einsum("bphd,hdm->bphm", c[f"head_z.{layer}"], w_o)
        total = per_head.sum(2) + (b_o if b_o is not None else 0)
        assert torch.allclose(total, outs[0], atol=ATOL, rtol=0)
        if tiny.arch.attn_post_norm is None:  # then the projection's output is the residual contribution
            assert torch.allclose(total, c[f"attn_out.{layer}"], atol=ATOL, rtol=0)
        else:  # sandwich norm: attn_out is that norm applied to the projection's output
            norm = tiny.module(f"{tiny.arch.layers}.{layer}.{tiny.arch.attn_post_norm}")
            assert torch.allclose(norm(total), c[f"attn_out.{layer}"], atol=ATOL, rtol=0)


def test_frozen_scale_post_norm_splits_attn_out_by_head(tiny: HookedModel) -> None:
    """docs/architectures.md: with the run's own RMS scale frozen, per-head terms sum to attn_out exactly."""
    if tiny.arch.attn_post_norm is None:
        pytest.skip(f"{tiny.arch.name} has no post-attention norm: attn_out is the projection's output "
                    "(test_head_z_projects_to_output_projection checks that split)")
    tokens, layer = ids(), 1
    with o_proj_outputs(tiny, layer) as outs:
        c = tiny.run(tokens, [Cache([f"head_z.{layer}", f"attn_out.{layer}"])]).cache
    norm = tiny.module(f"{tiny.arch.layers}.{layer}.{tiny.arch.attn_post_norm}")
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))

    def r(x: torch.Tensor) -> torch.Tensor:
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    w_o, b_o = tiny.output_projection(layer)
    o = outs[0]
    per_head = torch.einsum("bphd,hdm->hbpm", c[f"head_z.{layer}"], w_o)
    terms = [norm(per_head[h]) * r(o) / r(per_head[h]) for h in range(per_head.shape[0])]
    if b_o is not None:
        terms.append(norm(b_o.expand_as(o)) * r(o) / r(b_o.expand_as(o)))
    assert torch.allclose(sum(terms), c[f"attn_out.{layer}"], atol=ATOL, rtol=0)


def test_attn_pattern_matches_hf_eager(tiny: HookedModel) -> None:
    """Our eager attention equals the model's own (GQA, soft-capping, sliding windows included)."""
    tokens = ids()
    if "attn_pattern" not in tiny.available_kinds:
        with pytest.raises(SiteError, match="not available"):
            tiny.run(tokens, [Cache("attn_pattern.0")])
        pytest.skip(f"{tiny.arch.name} computes attention inline: no attn_pattern to compare (its SiteError was "
                    "checked)")
    result = tiny.run(tokens, [Cache("attn_pattern.*")])
    config = tiny.hf_model.config
    impl = config._attn_implementation
    # switch the config directly: Falcon refuses set_attn_implementation, and its SDPA path with
    # output_attentions adds a boolean mask to the scores (not a reference)
    config._attn_implementation_internal = "eager"
    try:
        with torch.no_grad():
            out = tiny.hf_model(tokens, output_attentions=True)
    finally:
        config._attn_implementation_internal = impl
    for layer in range(tiny.n_layers):
        pattern = result.cache[f"attn_pattern.{layer}"]
        assert pattern.shape == (2, tiny.n_heads, 7, 7)
        assert torch.allclose(pattern, out.attentions[layer], atol=ATOL)
        assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-5)
    window = getattr(tiny.hf_model.config, "sliding_window", None)
    for layer in sliding_layers(tiny):  # keys at distance >= window get no weight (7 tokens > window)
        far = torch.ones(7, 7, dtype=torch.bool).tril(-window)
        assert far.any() and torch.all(result.cache[f"attn_pattern.{layer}"][..., far] == 0)
    assert torch.allclose(result.logits, out.logits, atol=ATOL, rtol=0)
    # the attention implementation is restored afterwards
    assert tiny.hf_model.config._attn_implementation == impl


def test_zero_steer_changes_nothing(tiny: HookedModel) -> None:
    tokens = ids()
    base = tiny.run(tokens).logits
    steered = tiny.run(tokens, [Steer("resid_post.*", torch.zeros(tiny.d_model), scale=3.0)]).logits
    assert torch.allclose(base, steered, atol=ATOL, rtol=0)


def test_steer_equals_manual_addition(tiny: HookedModel) -> None:
    tokens = ids()
    v = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(2))  # a CPU vector: Steer moves it
    steered = tiny.run(tokens, [Steer("resid_pre.1", v, scale=0.5, positions=[2, 4])]).logits
    v = on_device(v)  # the hand-written Edit is user code: its tensors must be on the model's device

    def add(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, [2, 4]] += 0.5 * v
        return x
    manual = tiny.run(tokens, [Edit("resid_pre.1", add)]).logits
    assert torch.allclose(steered, manual, atol=ATOL, rtol=0)
    assert not torch.allclose(steered, tiny.run(tokens).logits, atol=1e-4)
    # positions before the first steered token are untouched (causality)
    assert torch.allclose(steered[:, :2], tiny.run(tokens).logits[:, :2], atol=ATOL, rtol=0)


def test_ablate_all_heads_removes_attention(tiny: HookedModel) -> None:
    tokens = ids()
    layer = 1
    _, b_o = tiny.output_projection(layer)
    ablated = tiny.run(tokens, [Ablate(f"head_z.{layer}", heads=list(range(tiny.n_heads)))])

    def no_attention(x: torch.Tensor) -> torch.Tensor:  # only the output bias remains
        return torch.zeros_like(x) + (b_o if b_o is not None else 0)
    with torch.no_grad(), o_proj_outputs(tiny, layer, replace=no_attention):
        removed = tiny.hf_model(tokens).logits
    assert torch.allclose(ablated.logits, removed, atol=ATOL, rtol=0)
    assert not torch.allclose(ablated.logits, tiny.run(tokens).logits, atol=1e-4)


def test_ablate_one_head_matches_manual_projection(tiny: HookedModel) -> None:
    tokens = ids()
    layer, head = 0, 2
    with o_proj_outputs(tiny, layer) as base:
        c = tiny.run(tokens, [Cache(f"head_z.{layer}")]).cache
    w_o, _ = tiny.output_projection(layer)
    expected = base[0] - c[f"head_z.{layer}"][:, :, head] @ w_o[head]
    with o_proj_outputs(tiny, layer) as got:
        tiny.run(tokens, [Ablate(f"head_z.{layer}", heads=head)])
    assert torch.allclose(got[0], expected, atol=ATOL, rtol=0)


def test_patch_from_own_run_is_identity(tiny: HookedModel) -> None:
    """Patching every site with its own cached value (all at once) changes nothing."""
    tokens = ids()
    sites = [s for s in tiny.sites() if not s.startswith(("attn_pattern", "attn_scores"))]
    base = tiny.run(tokens, [Cache(sites)])
    patched = tiny.run(tokens, [Patch(sites, base.cache)]).logits
    assert torch.allclose(patched, base.logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_unbatched(tiny: HookedModel, side: str) -> None:
    seqs = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]
    cache = Cache(["resid_post.1", "head_z.0"])
    batched = tiny.run(seqs, [cache, Steer("resid_mid.1" if "resid_mid" in tiny.available_kinds else "mlp_out.1",
                                           torch.ones(tiny.d_model) * 0.1, positions=-1)], padding_side=side)
    for i, seq in enumerate(seqs):
        single_cache = Cache(["resid_post.1", "head_z.0"])
        single = tiny.run([seq], [single_cache, Steer("resid_mid.1" if "resid_mid" in tiny.available_kinds
                                                      else "mlp_out.1", torch.ones(tiny.d_model) * 0.1,
                                                      positions=-1)])
        keep = batched.batch.attention_mask[i].bool()
        assert torch.allclose(batched.logits[i][keep], single.logits[0], atol=ATOL, rtol=0)
        for name in ("resid_post.1", "head_z.0"):
            assert torch.allclose(batched.cache.unpad(name, i), single.cache[name][0], atol=ATOL, rtol=0)


def test_attn_pattern_is_writable(tiny: HookedModel) -> None:
    """z = pattern @ V per head, so scaling the written pattern scales head_z of that layer exactly."""
    if "attn_pattern" not in tiny.available_kinds:
        pytest.skip(f"{tiny.arch.name} computes attention inline (test_attn_pattern_matches_hf_eager checks the error)")
    tokens = ids()
    base = tiny.run(tokens, [Cache("head_z.0")]).cache["head_z.0"]
    doubled = tiny.run(tokens, [Edit("attn_pattern.0", lambda p: p * 2), Cache("head_z.0")]).cache["head_z.0"]
    assert torch.allclose(doubled, 2 * base, atol=ATOL, rtol=1e-5)
