"""Tuned lens: zero init = logit lens, translator maths, save/load, fingerprints, train/eval access."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import build_tiny, on_device, random_ids

from lmscope.interventions import Cache, HookedModel, ModelMismatchError
from lmscope.lens import LogitLens, TunedLens


def test_zero_init_equals_logit_lens(tiny: HookedModel) -> None:
    ids = random_ids((2, 6), 1)
    tuned, logit = TunedLens(tiny, sites="all"), LogitLens(tiny, sites="all")
    r = tiny.run(ids, [Cache([*tuned.readings])])
    for a, b in zip(tuned.forward_all(r.cache), logit.forward_all(r.cache)):
        assert torch.equal(a, b)


def test_translator_is_affine(llama_tiny: HookedModel) -> None:
    lens = TunedLens(llama_tiny)
    assert lens.weight.shape == (3, 32, 32) and lens.bias.shape == (3, 32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        lens.weight.copy_(0.1 * torch.randn(lens.weight.shape, generator=g))  # seeded on the CPU, copied over
        lens.bias.copy_(0.1 * torch.randn(lens.bias.shape, generator=g))
    h = on_device(torch.randn(4, 32, generator=g))
    torch.testing.assert_close(lens.translate(h, 1), h + h @ lens.weight[1].T + lens.bias[1])
    torch.testing.assert_close(lens.logits(h, 1), llama_tiny.decode_hidden(lens.translate(h, 1)))
    assert not torch.equal(lens.logits(h, 1), LogitLens(llama_tiny).logits(h, 1))


def _randomised(model: HookedModel, sites: str = "resid_post") -> TunedLens:
    lens = TunedLens(model, sites=sites)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        lens.weight.copy_(0.05 * torch.randn(lens.weight.shape, generator=g))
        lens.bias.copy_(0.05 * torch.randn(lens.bias.shape, generator=g))
    return lens


def test_save_load_round_trip(llama_tiny: HookedModel, tmp_path) -> None:
    lens = _randomised(llama_tiny, sites="all")
    lens.meta["note"] = "hi"
    lens.save(tmp_path / "lens")
    assert sorted(p.name for p in (tmp_path / "lens").iterdir()) == ["config.json", "lens.safetensors"]
    cfg = json.loads((tmp_path / "lens" / "config.json").read_text())
    assert cfg["readings"] == lens.readings and cfg["fingerprint"]["architecture"] == llama_tiny.arch.name
    back = TunedLens.load(tmp_path / "lens", llama_tiny)
    assert torch.equal(back.weight, lens.weight) and torch.equal(back.bias, lens.bias)
    assert back.readings == lens.readings and back.meta == {"note": "hi"} and back.path == tmp_path / "lens"
    a = lens.decode([1, 2, 3, 4])
    b = back.decode([1, 2, 3, 4])
    assert torch.equal(a.top_ids, b.top_ids) and torch.equal(a.top_probs, b.top_probs)
    # the same checkpoint in bf16 accepts the lens (params stay float32)
    bf16 = HookedModel(build_tiny("llama", dtype=torch.bfloat16))
    low = TunedLens.load(tmp_path / "lens", bf16)
    assert low.weight.dtype == torch.float32 and torch.equal(low.weight, lens.weight)
    assert torch.isfinite(low.decode([1, 2, 3]).top_probs).all()


def test_fingerprint_mismatch_raises(llama_tiny: HookedModel, tmp_path) -> None:
    _randomised(llama_tiny).save(tmp_path / "lens")
    with pytest.raises(ModelMismatchError, match="lens"):
        TunedLens.load(tmp_path / "lens", HookedModel(build_tiny("llama", seed=1)))
    with pytest.raises(ModelMismatchError):
        TunedLens.load(tmp_path / "lens", HookedModel(build_tiny("qwen2")))


def test_module_mode_and_parameters(llama_tiny: HookedModel) -> None:
    lens = TunedLens(llama_tiny)
    assert lens.eval() is lens and lens.training is False
    lens.train()
    assert lens.training is True
    assert {n for n, _ in lens.named_parameters()} == {"weight", "bias"}
