"""The architecture battery: exact equivalences every supported architecture must satisfy."""

from __future__ import annotations

import pytest
import torch
from lmscope.interventions import Ablate, Cache, Edit, HookedModel, Patch, Steer

ATOL = 1e-5


def ids(batch: int = 2, seq: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, 97, (batch, seq), generator=torch.Generator().manual_seed(seed))


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
    layer = 1
    names = [f"{k}.{layer}" for k in ("resid_pre", "attn_out", "mlp_out", "resid_post")]
    has_mid = "resid_mid" in tiny.available_kinds
    result = tiny.run(tokens, [Cache(names + ([f"resid_mid.{layer}"] if has_mid else []))])
    c = result.cache
    total = c[f"resid_pre.{layer}"] + c[f"attn_out.{layer}"] + c[f"mlp_out.{layer}"]
    assert torch.allclose(total, c[f"resid_post.{layer}"], atol=ATOL, rtol=0)
    if has_mid:
        assert torch.allclose(c[f"resid_pre.{layer}"] + c[f"attn_out.{layer}"], c[f"resid_mid.{layer}"], atol=ATOL)
    # resid_pre of layer L+1 is resid_post of layer L
    nxt = tiny.run(tokens, [Cache([f"resid_pre.{layer + 1}"])]).cache[f"resid_pre.{layer + 1}"]
    assert torch.equal(nxt, c[f"resid_post.{layer}"])


def test_head_z_projects_to_attn_out(tiny: HookedModel) -> None:
    tokens = ids()
    for layer in range(tiny.n_layers):
        c = tiny.run(tokens, [Cache([f"head_z.{layer}", f"attn_out.{layer}"])]).cache
        w_o, b_o = tiny.output_projection(layer)
        per_head = torch.einsum("bphd,hdm->bphm", c[f"head_z.{layer}"], w_o)
        total = per_head.sum(2) + (b_o if b_o is not None else 0)
        assert torch.allclose(total, c[f"attn_out.{layer}"], atol=ATOL, rtol=0)


def test_attn_pattern_matches_hf_eager(tiny: HookedModel) -> None:
    tokens = ids()
    result = tiny.run(tokens, [Cache("attn_pattern.*")])
    tiny.hf_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = tiny.hf_model(tokens, output_attentions=True)
    finally:
        tiny.hf_model.set_attn_implementation("sdpa")
    for layer in range(tiny.n_layers):
        pattern = result.cache[f"attn_pattern.{layer}"]
        assert pattern.shape == (2, tiny.n_heads, 7, 7)
        assert torch.allclose(pattern, out.attentions[layer], atol=ATOL)
        assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-5)
    assert torch.allclose(result.logits, out.logits, atol=ATOL, rtol=0)
    # the attention implementation is restored afterwards
    assert tiny.hf_model.config._attn_implementation == "sdpa"


def test_zero_steer_changes_nothing(tiny: HookedModel) -> None:
    tokens = ids()
    base = tiny.run(tokens).logits
    steered = tiny.run(tokens, [Steer("resid_post.*", torch.zeros(tiny.d_model), scale=3.0)]).logits
    assert torch.allclose(base, steered, atol=ATOL, rtol=0)


def test_steer_equals_manual_addition(tiny: HookedModel) -> None:
    tokens = ids()
    v = torch.randn(tiny.d_model)
    steered = tiny.run(tokens, [Steer("resid_pre.1", v, scale=0.5, positions=[2, 4])]).logits

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
    removed = tiny.run(tokens, [Edit(f"attn_out.{layer}", no_attention)])
    assert torch.allclose(ablated.logits, removed.logits, atol=ATOL, rtol=0)
    assert not torch.allclose(ablated.logits, tiny.run(tokens).logits, atol=1e-4)


def test_ablate_one_head_matches_manual_projection(tiny: HookedModel) -> None:
    tokens = ids()
    layer, head = 0, 2
    c = tiny.run(tokens, [Cache([f"head_z.{layer}", f"attn_out.{layer}"])]).cache
    w_o, _ = tiny.output_projection(layer)
    expected_attn = c[f"attn_out.{layer}"] - c[f"head_z.{layer}"][:, :, head] @ w_o[head]
    got = tiny.run(tokens, [Ablate(f"head_z.{layer}", heads=head), Cache(f"attn_out.{layer}")]).cache
    assert torch.allclose(got[f"attn_out.{layer}"], expected_attn, atol=ATOL, rtol=0)


def test_patch_from_own_run_is_identity(tiny: HookedModel) -> None:
    tokens = ids()
    base = tiny.run(tokens, [Cache("resid_pre.*")])
    patched = tiny.run(tokens, [Patch("resid_pre.*", base.cache)]).logits
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
    tokens = ids()
    base = tiny.run(tokens, [Cache("head_z.0")]).cache["head_z.0"]
    doubled = tiny.run(tokens, [Edit("attn_pattern.0", lambda p: p * 2), Cache("head_z.0")]).cache["head_z.0"]
    assert torch.allclose(doubled, 2 * base, atol=ATOL, rtol=1e-5)
