"""Ports of attention forwards that compute attention inline instead of calling transformers' interface.

``attn_pattern`` needs the attention probabilities in hand (read and write). Most HF attention
classes call ``ALL_ATTENTION_FUNCTIONS``, where the hooks backend swaps in an eager attention;
the few that do not get a port here, with the same signature as the HF forward plus the attention
function to call. An :class:`~lmscope.interventions.architectures.Architecture` names its port in
``attention_forward``; the backend installs it only on layers whose ``attn_pattern`` is hooked.
Each port is checked against the model's own eager attention by the architecture battery.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

AttentionFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def falcon_attention(module: Any, attention_fn: AttentionFn, hidden_states: torch.Tensor,
                     alibi: torch.Tensor | None, attention_mask: torch.Tensor | None,
                     position_ids: torch.Tensor | None = None, layer_past: Any = None, use_cache: bool = False,
                     output_attentions: bool = False, position_embeddings: Any = None,
                     **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``FalconAttention.forward`` (rotary, no ALiBi) with the softmax attention delegated to ``attention_fn``."""
    from transformers.models.falcon.modeling_falcon import apply_rotary_pos_emb

    if alibi is not None:  # pragma: no cover - the adapter makes attn_pattern unavailable with ALiBi
        raise AssertionError("falcon_attention ports the rotary path only")
    n_kv = module.num_heads if module.new_decoder_architecture else module.num_kv_heads
    query, key, value = module._split_heads(module.query_key_value(hidden_states))
    batch, length, _, _ = query.shape
    query = query.transpose(1, 2).reshape(batch, module.num_heads, length, module.head_dim)
    key = key.transpose(1, 2).reshape(batch, n_kv, length, module.head_dim)
    value = value.transpose(1, 2).reshape(batch, n_kv, length, module.head_dim)
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_idx)
    out, weights = attention_fn(module, query, key, value, attention_mask, scaling=module.inv_norm_factor)
    out = out.reshape(batch, length, module.num_heads * module.head_dim)
    return module.dense(out), weights
