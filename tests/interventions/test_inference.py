"""Unregistered model types: an adapter inferred from the module tree is accepted only after its probe checks."""

from __future__ import annotations

import pytest
import torch
from tiny_models import COMMON, IDS, TEST_DEVICE, build_tiny, random_ids
from transformers import AutoModelForCausalLM, BloomConfig, GraniteConfig, Olmo3Config, OlmoConfig

from lmscope.interventions import ARCHITECTURES, HookedModel, UnsupportedArchitectureError


def build(config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval().to(TEST_DEVICE)


def assert_exact(model: HookedModel) -> None:
    tokens = random_ids((2, 7), 0)
    with torch.no_grad():
        hf = model.hf_model(tokens).logits
    assert torch.allclose(model.run(tokens).logits, hf, atol=1e-5, rtol=0)


@pytest.mark.parametrize("config, post_norms", [
    (lambda: OlmoConfig(**COMMON, **IDS, num_key_value_heads=2), (None, None)),  # LLaMA-shaped
    (lambda: Olmo3Config(**COMMON, **IDS, num_key_value_heads=2, sliding_window=4),  # sandwich norms
     ("post_attention_layernorm", "post_feedforward_layernorm")),
])
def test_llama_shaped_model_type_is_inferred_and_verified(config, post_norms, one_thread) -> None:
    hf = build(config())
    assert hf.config.model_type not in ARCHITECTURES
    with pytest.warns(UserWarning, match=f"model_type='{hf.config.model_type}'.*inferred.*verified on a probe"):
        model = HookedModel(hf)
    assert model.arch.inferred and model.arch.name.startswith("inferred-llama-shaped")
    assert (model.arch.attn_post_norm, model.arch.mlp_post_norm) == post_norms
    assert_exact(model)


def test_neox_shaped_model_type_is_inferred(one_thread) -> None:
    hf = build_tiny("gpt_neox")
    hf.config.model_type = "my_neox"
    with pytest.warns(UserWarning, match="inferred"):
        model = HookedModel(hf)
    assert model.arch.name == "inferred-neox-shaped:my_neox" and "resid_mid" not in model.available_kinds
    assert_exact(model)


def test_inferred_adapter_failing_its_probe_is_refused_naming_the_identity(one_thread) -> None:
    """Granite is LLaMA-shaped but scales its residual branches, embeddings and logits: a LLaMA adapter would
    read wrong residual contributions, so the probe refuses it."""
    hf = build(GraniteConfig(**COMMON, **IDS, residual_multiplier=0.5, embedding_multiplier=2.0,
                             logits_scaling=4.0))
    with pytest.raises(UnsupportedArchitectureError) as err:
        HookedModel(hf)
    msg = str(err.value)
    assert "model_type='granite'" in msg and "fails its probe checks" in msg
    assert "resid_post = resid_pre + attn_out + mlp_out" in msg and "embed = resid_pre.0" in msg
    assert "register_architecture" in msg and "Closest supported families" in msg


def test_unrecognised_tree_names_closest_families(one_thread) -> None:
    hf = build(BloomConfig(vocab_size=97, hidden_size=32, n_layer=2, n_head=4))
    with pytest.raises(UnsupportedArchitectureError) as err:
        HookedModel(hf)
    msg = str(err.value)
    assert "model_type='bloom'" in msg and "neither LLaMA-shaped" in msg
    assert "Closest supported families: falcon" in msg  # transformer.h[i].self_attention.dense, like Falcon
    assert "register_architecture" in msg
