"""The one list of tiny random architectures every battery runs on (nnterp-style).

Each entry builds an HF causal LM from a small config with random weights; no
download is involved. Add an architecture here and every battery covers it.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from transformers import (
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
              intermediate_size=48, max_position_embeddings=64)

TINY_CONFIGS: dict[str, Callable[[], Any]] = {
    "llama": lambda: LlamaConfig(**COMMON, num_key_value_heads=2, tie_word_embeddings=False),
    "llama_tied": lambda: LlamaConfig(**COMMON, num_key_value_heads=4, tie_word_embeddings=True),
    "gpt_neox": lambda: GPTNeoXConfig(**COMMON, use_parallel_residual=True, rotary_pct=0.5),
    "gpt_neox_sequential": lambda: GPTNeoXConfig(**COMMON, use_parallel_residual=False, rotary_pct=0.25),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, n_inner=48,
                                bos_token_id=0, eos_token_id=0),
    "qwen2": lambda: Qwen2Config(**COMMON, num_key_value_heads=2),
    "mistral": lambda: MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=None),
    "gemma": lambda: GemmaConfig(**COMMON, num_key_value_heads=1, head_dim=16),
}


#: Where test models run: ``LMSCOPE_TEST_DEVICE=cuda make test`` runs the suite on a GPU (default: CPU).
TEST_DEVICE = os.environ.get("LMSCOPE_TEST_DEVICE", "cpu")


def build_tiny(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A tiny random model of architecture ``name`` in eval mode, on ``TEST_DEVICE`` (same weights everywhere)."""
    from transformers import AutoModelForCausalLM

    config = TINY_CONFIGS[name]()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # random init of HF leaves some norms at 1 / biases at 0: perturb so every parameter matters
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval().to(TEST_DEVICE)
