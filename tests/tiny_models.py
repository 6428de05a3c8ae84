"""The one list of tiny random architectures every battery runs on (nnterp-style).

Each entry builds an HF causal LM from a small config with random weights; no
download is involved. Add an architecture here and every battery covers it.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from transformers import (
    CohereConfig,
    FalconConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Olmo2Config,
    Phi3Config,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
    SmolLM3Config,
    StableLmConfig,
)

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
              intermediate_size=48, max_position_embeddings=64)
#: Sliding windows shorter than the battery's 7-token prompts, so the window actually masks keys.
WINDOW = 4
SLIDING_LAYERS = ["sliding_attention", "full_attention", "sliding_attention"]
MOE = dict(num_local_experts=4, num_experts_per_tok=2)
IDS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)  # some configs default to ids beyond the tiny vocab
QWEN_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1)

TINY_CONFIGS: dict[str, Callable[[], Any]] = {
    "llama": lambda: LlamaConfig(**COMMON, num_key_value_heads=2, tie_word_embeddings=False),
    "llama_tied": lambda: LlamaConfig(**COMMON, num_key_value_heads=4, tie_word_embeddings=True),
    "gpt_neox": lambda: GPTNeoXConfig(**COMMON, use_parallel_residual=True, rotary_pct=0.5),
    "gpt_neox_sequential": lambda: GPTNeoXConfig(**COMMON, use_parallel_residual=False, rotary_pct=0.25),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, n_inner=48,
                                bos_token_id=0, eos_token_id=0),
    "qwen2": lambda: Qwen2Config(**COMMON, num_key_value_heads=2),
    "mistral": lambda: MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=None),
    "mistral_sliding": lambda: MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=WINDOW),
    "gemma": lambda: GemmaConfig(**COMMON, num_key_value_heads=1, head_dim=16),
    "gemma2": lambda: Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=16, sliding_window=WINDOW,
                                   layer_types=SLIDING_LAYERS, query_pre_attn_scalar=12,
                                   attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
    "gemma3_text": lambda: Gemma3TextConfig(**COMMON, num_key_value_heads=2, head_dim=16, sliding_window=WINDOW,
                                            layer_types=SLIDING_LAYERS, query_pre_attn_scalar=12,
                                            final_logit_softcapping=3.0),
    "qwen3": lambda: Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=8),
    "qwen2_moe": lambda: Qwen2MoeConfig(**COMMON, **QWEN_MOE, num_key_value_heads=2,
                                        shared_expert_intermediate_size=24),
    "qwen3_moe": lambda: Qwen3MoeConfig(**COMMON, **QWEN_MOE, num_key_value_heads=2, head_dim=8),
    "mixtral": lambda: MixtralConfig(**COMMON, **MOE, num_key_value_heads=2, sliding_window=WINDOW),
    "phi3": lambda: Phi3Config(**COMMON, **IDS, num_key_value_heads=2),
    "olmo2": lambda: Olmo2Config(**COMMON, **IDS, num_key_value_heads=2),
    "gptj": lambda: GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, n_inner=48,
                               rotary_dim=4, bos_token_id=0, eos_token_id=0),
    "falcon": lambda: FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                   multi_query=True, parallel_attn=True, bias=True, max_position_embeddings=64),
    "falcon_sequential": lambda: FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3,
                                              num_attention_heads=4, multi_query=False, parallel_attn=False,
                                              max_position_embeddings=64),
    "falcon_alibi": lambda: FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                         alibi=True, max_position_embeddings=64),
    "stablelm": lambda: StableLmConfig(**COMMON, num_key_value_heads=2, partial_rotary_factor=0.5),
    "stablelm_parallel": lambda: StableLmConfig(**COMMON, num_key_value_heads=2, use_parallel_residual=True,
                                                qk_layernorm=True),
    "cohere": lambda: CohereConfig(**COMMON, **IDS, num_key_value_heads=2, logit_scale=0.5, use_qk_norm=False),
    "smollm3": lambda: SmolLM3Config(**COMMON, **IDS, num_key_value_heads=2, no_rope_layer_interval=2),
}


#: Where test models run: ``LMSCOPE_TEST_DEVICE=cuda make test`` runs the suite on a GPU (default: CPU).
#: ``LMSCOPE_TEST_DEVICE=lazy`` runs it on PyTorch's lazy-tensor device, a second device type on a CPU-only
#: machine, so a test or a library path that mixes CPU tensors into device work fails here as it would on CUDA.
TEST_DEVICE = os.environ.get("LMSCOPE_TEST_DEVICE", "cpu")

#: Architectures whose *unhooked* HF forward already fails (or crashes the process) on the lazy device; lmscope
#: is not involved, so their tests are skipped there. Checked with a plain ``hf(ids).logits.sum().backward()``.
LAZY_UNSUPPORTED = {
    "gpt2": "lazy-tensor internal assert in HF GPT-2 attention",
    "gpt_neox": "HF GPT-NeoX rotary mixes CPU tensors on the lazy device",
    "gpt_neox_sequential": "HF GPT-NeoX rotary mixes CPU tensors on the lazy device",
    "gptj": "HF GPT-J rotary mixes CPU tensors on the lazy device",
    "phi3": "HF Phi-3 rotary mixes CPU tensors on the lazy device",
    "mixtral": "torch.histc has no lazy kernel for integer routing counts",
    "qwen2_moe": "torch.histc has no lazy kernel for integer routing counts",
    "qwen3_moe": "torch.histc has no lazy kernel for integer routing counts",
    "stablelm_parallel": "per-head LayerNorm segfaults the lazy TorchScript backend",
}




def _falcon_rotary_in_interface() -> bool:
    """transformers >= 5.25 computes Falcon's attention through the attention interface (no ``alibi`` argument)."""
    from transformers.models.falcon.modeling_falcon import FalconAttention

    from lmscope.interventions.hf_compat import positional_params

    return "alibi" not in positional_params(FalconAttention.forward)


if _falcon_rotary_in_interface():  # the plain, unhooked HF forward fails there (checked by hand)
    for _name in ("falcon", "falcon_sequential"):
        LAZY_UNSUPPORTED[_name] = ("HF Falcon's rotary (transformers >= 5.25: split/unbind of the fused projection) "
                                   "raises 'Input tensor is not a lazy tensor' on the lazy device")
    LAZY_UNSUPPORTED["falcon_alibi"] = ("HF Falcon's ALiBi mask (transformers >= 5.25) hits a lazy-tensor internal "
                                        "assert (GetTensorList) on the lazy device")


def skip_on_lazy(reason: str) -> None:
    """Skip the current test on the lazy test device, for a limitation of that device itself (``reason``)."""
    if TEST_DEVICE == "lazy":
        import pytest

        pytest.skip(f"lazy test device: {reason}")


def skip_lazy_miscompute(model: Any, what: str) -> None:
    """Skip a Falcon test on the lazy device: there the lazy backend returns one layer's per-head DLA terms for
    every layer (checked by hand: the same code on the CPU is exact), which is a lazy-backend fault, not lmscope's."""
    if model.hf_model.config.model_type == "falcon":
        skip_on_lazy(f"{what}: it miscomputes Falcon's per-head terms")


def skip_unsupported(name: str) -> None:
    """Skip the current test when architecture ``name`` cannot run on ``TEST_DEVICE`` even without lmscope."""
    if name in LAZY_UNSUPPORTED:
        skip_on_lazy(f"{name}: {LAZY_UNSUPPORTED[name]}")


def on_device(x: torch.Tensor) -> torch.Tensor:
    """``x`` on ``TEST_DEVICE``: expectations computed by hand must live where the model's results do."""
    return x.to(TEST_DEVICE)


def random_ids(shape: tuple[int, ...], seed: int, high: int = VOCAB) -> torch.Tensor:
    """Token ids in ``[1, high)`` from a seeded CPU generator (the same ids on every device), on ``TEST_DEVICE``."""
    return on_device(torch.randint(1, high, shape, generator=torch.Generator().manual_seed(seed)))


def build_tiny(name: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any) -> torch.nn.Module:
    """A tiny random model of architecture ``name`` in eval mode, on ``TEST_DEVICE`` (same weights everywhere);
    keyword arguments override config fields (e.g. ``sliding_window=48``: a window longer than the prompts)."""
    from transformers import AutoModelForCausalLM

    skip_unsupported(name)
    config = TINY_CONFIGS[name]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # random init of HF leaves some norms at 1 / biases at 0: perturb so every parameter matters
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.generation_config.eos_token_id = None  # random weights: stopping at an "end" token would cut comparisons
    return model.eval().to(TEST_DEVICE)
