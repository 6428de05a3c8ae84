"""Cache and ActivationCache: position selection, stacking, unpadding, and their errors."""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import Cache, HookedModel, InputError, SiteError

TOKENS = [[1, 2, 3, 4, 5], [6, 7, 8]]


def test_positions_select_real_tokens(llama_tiny: HookedModel) -> None:
    full = llama_tiny.run(TOKENS, [Cache("resid_post.1")])
    last = llama_tiny.run(TOKENS, [Cache("resid_post.1", positions=-1)])
    assert last.cache["resid_post.1"].shape == (2, 1, llama_tiny.d_model)
    for i in range(2):
        assert torch.equal(last.cache["resid_post.1"][i, 0], full.cache.unpad("resid_post.1", i)[-1])


def test_attn_pattern_positions_select_queries(llama_tiny: HookedModel) -> None:
    full = llama_tiny.run(TOKENS, [Cache("attn_pattern.0")]).cache["attn_pattern.0"]
    first = llama_tiny.run(TOKENS, [Cache("attn_pattern.0", positions=[0, 1])]).cache["attn_pattern.0"]
    assert first.shape == (2, llama_tiny.n_heads, 2, 5)
    assert torch.equal(first[0], full[0, :, :2])  # row 0 has no padding
    assert torch.equal(first[1], full[1, :, 2:4])  # row 1 is left-padded by two


def test_unequal_selection_is_refused(llama_tiny: HookedModel) -> None:
    with pytest.raises(InputError, match=r"select \[1, 2\] tokens per row"):
        llama_tiny.run(TOKENS, [Cache("resid_post.0", positions=[[0], [0, 1]])])


def test_stack_dtype_device_and_errors(llama_tiny: HookedModel) -> None:
    result = llama_tiny.run(TOKENS, [Cache("resid_post.*", dtype=torch.float16, device="cpu")])
    stacked = result.cache.stack("resid_post.*")
    assert stacked.shape == (llama_tiny.n_layers, 2, 5, llama_tiny.d_model) and stacked.dtype == torch.float16
    assert "resid_post.-1" in result.cache and "mlp_out.0" not in result.cache
    with pytest.raises(SiteError, match="was not cached; this cache holds: resid_post.0"):
        result.cache["mlp_out.0"]
    with pytest.raises(SiteError, match="several sites"):
        result.cache["resid_post.*"]


def test_cache_object_is_reset_per_session(llama_tiny: HookedModel) -> None:
    cache = Cache("embed")
    llama_tiny.run([[1, 2]], [cache])
    llama_tiny.run([[3, 4, 5]], [cache])
    assert cache["embed"].shape == (1, 3, llama_tiny.d_model)  # the second run's tokens only, nothing appended
    assert torch.equal(cache["embed"], llama_tiny.run([[3, 4, 5]], [Cache("embed")]).cache["embed"])
