"""SmolLM2-specific integration tests (the checks every real model passes are in test_real_models.py)."""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import Ablate, Cache, HookedModel, Steer

pytestmark = pytest.mark.slow


def test_default_model_shape(smollm: HookedModel) -> None:
    assert (smollm.arch.name, smollm.n_layers, smollm.d_model, smollm.n_heads, smollm.d_head) == \
        ("llama", 30, 576, 9, 64)


def test_paris_is_top1(smollm: HookedModel) -> None:
    result = smollm.run("The capital of France is")
    assert result.last_logits()[0].argmax().item() == smollm.token_id(" Paris")
    gen = smollm.generate("The capital of France is", max_new_tokens=2)
    assert gen.texts[0].startswith(" Paris")


def test_interventions_move_the_answer(smollm: HookedModel) -> None:
    paris = smollm.token_id(" Paris")
    base = smollm.run("The capital of France is").last_logits().log_softmax(-1)[0, paris]
    ablated = smollm.run("The capital of France is", [Ablate("mlp_out.*")]).last_logits().log_softmax(-1)[0, paris]
    assert ablated < base - 1.0
    v = torch.zeros(smollm.d_model)
    same = smollm.run("The capital of France is", [Steer("resid_pre.5", v)]).last_logits().log_softmax(-1)[0, paris]
    assert torch.allclose(same, base, atol=1e-5)


def test_bfloat16_default_model_runs_and_caches() -> None:
    model = HookedModel.default(dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    result = model.run("The capital of France is", [Cache("head_z.-1"), Steer("resid_pre.3", torch.zeros(576))])
    assert result.cache["head_z.-1"].dtype == torch.bfloat16
    assert result.last_logits()[0].argmax().item() == model.token_id(" Paris")
