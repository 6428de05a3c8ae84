"""Patch: token-span patching from a source run, with and without a source/target position map."""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import Cache, HookedModel, InputError, Patch

SRC = [[11, 12, 13, 14, 15, 16]]
TGT = [[21, 22, 23, 24, 25, 26]]


def test_patch_span_from_source_prompt(tiny: HookedModel) -> None:
    site = "resid_pre.1"
    src = tiny.run(SRC, [Cache(site)]).cache[site]
    out = tiny.run(TGT, [Patch(site, SRC, positions=slice(1, 3)), Cache(site)])
    got = out.cache[site]
    assert torch.equal(got[0, 1:3], src[0, 1:3])
    base = tiny.run(TGT, [Cache(site)])
    assert torch.equal(got[0, :1], base.cache[site][0, :1])  # untouched before the span
    assert torch.allclose(out.logits[0, 0], base.logits[0, 0], atol=1e-6)  # causality
    assert not torch.allclose(out.logits[0, -1], base.logits[0, -1], atol=1e-5)


def test_patch_every_position_transplants_the_source(tiny: HookedModel) -> None:
    site = "resid_pre.*"
    src = tiny.run(SRC)
    out = tiny.run(TGT, [Patch(site, SRC)])
    assert torch.allclose(out.logits, src.logits, atol=1e-5)


def test_source_positions_map(llama_tiny: HookedModel) -> None:
    site = "resid_pre.2"
    src = llama_tiny.run(SRC, [Cache(site)]).cache[site]
    out = llama_tiny.run(TGT, [Patch(site, SRC, positions=[4, 5], source_positions=[0, 1]), Cache(site)])
    assert torch.equal(out.cache[site][0, 4:6], src[0, 0:2])


def test_patch_with_left_padding_uses_token_indices(llama_tiny: HookedModel) -> None:
    site = "resid_post.0"
    values = torch.randn(3, llama_tiny.d_model, generator=torch.Generator().manual_seed(0))
    batch = [[1, 2, 3, 4, 5], [6, 7, 8]]
    out = llama_tiny.run(batch, [Patch(site, values, positions=[0, 2]), Cache(site)], padding_side="left")
    row1 = out.cache.unpad(site, 1)
    assert torch.equal(row1[0], values[0]) and torch.equal(row1[2], values[2])
    single = llama_tiny.run([batch[1]], [Patch(site, values, positions=[0, 2])])
    assert torch.allclose(out.logits[1, -3:], single.logits[0], atol=1e-5)


def test_patch_errors(llama_tiny: HookedModel) -> None:
    with pytest.raises(InputError, match="only 2 tokens"):
        llama_tiny.run(TGT, [Patch("resid_pre.0", torch.randn(2, llama_tiny.d_model), positions=[4])])
    with pytest.raises(InputError, match="needs \\(32,\\)"):
        llama_tiny.run(TGT, [Patch("resid_pre.0", torch.randn(6, 5))])
    with pytest.raises(InputError, match="pair one to one"):
        llama_tiny.run(TGT, [Patch("resid_pre.0", SRC, positions=[1, 2], source_positions=[1])])
    with pytest.raises(InputError, match="outside prompt 0"):
        llama_tiny.run(TGT, [Patch("resid_pre.0", SRC, positions=[9])])
    with pytest.raises(InputError, match="explicit positions"):
        Patch("resid_pre.0", SRC, positions="prompt", source_positions=[1])
