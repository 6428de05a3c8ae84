"""Ports of attention forwards that compute attention inline instead of calling transformers' interface.

``attn_pattern`` needs the attention probabilities in hand (read and write). Most HF attention
classes call ``ALL_ATTENTION_FUNCTIONS``, where the hooks backend swaps in an eager attention;
the few that do not get a port here, with the same signature as the HF forward plus the attention
function to call. An :class:`~lmscope.interventions.architectures.Architecture` names a *resolver* in
``attention_port``: given the model's attention module it returns the port to install, or None when that
transformers version already calls the attention interface. A resolver checks the HF forward's signature
when the model is wrapped and refuses a version it does not know (a :class:`LibraryVersionError` naming the
installed and tested versions) instead of failing mid-forward. The backend installs a port only on layers
whose ``attn_pattern`` is hooked; each port is checked against the model's own eager attention by the
architecture battery.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .errors import LibraryVersionError
from .hf_compat import positional_params, version_hint

AttentionFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
#: A port: ``port(module, attention_fn, *hf_forward_args, **hf_forward_kwargs)``.
AttentionPort = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def falcon_attention(module: Any, attention_fn: AttentionFn, hidden_states: torch.Tensor,
                     alibi: torch.Tensor | None, attention_mask: torch.Tensor | None,
                     position_ids: torch.Tensor | None = None, layer_past: Any = None, use_cache: bool = False,
                     output_attentions: bool = False, position_embeddings: Any = None,
                     **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``FalconAttention.forward`` of transformers < 5.25 (rotary, no ALiBi), softmax attention delegated to
    ``attention_fn``."""
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


#: ``FalconAttention.forward``'s named parameters: computed inline (transformers 5.0-5.24, ported above) ...
FALCON_INLINE = ("self", "hidden_states", "alibi", "attention_mask", "position_ids", "layer_past", "use_cache",
                 "output_attentions", "position_embeddings")
#: ... and through ``ALL_ATTENTION_FUNCTIONS`` (transformers 5.25: ALiBi moved into the mask; no port needed).
FALCON_INTERFACE = tuple(p for p in FALCON_INLINE if p != "alibi")
_FALCON_PORT_USES = ("_split_heads", "query_key_value", "inv_norm_factor", "num_heads", "num_kv_heads", "head_dim",
                     "dense", "new_decoder_architecture")


def falcon_port(attn: nn.Module) -> AttentionPort | None:
    """The port Falcon's attention needs on the installed transformers: None when it calls the attention interface,
    :func:`falcon_attention` for the inline forward it was written for; otherwise a LibraryVersionError."""
    params = positional_params(type(attn).forward)
    if params == FALCON_INTERFACE:
        return None
    missing = [a for a in _FALCON_PORT_USES if not hasattr(attn, a)]
    if params == FALCON_INLINE and not missing:
        return falcon_attention
    found = f"forward({', '.join(params[1:])})" + (f" without {', '.join(missing)}" if missing else "")
    raise LibraryVersionError(
        f"lmscope's Falcon adapter does not know this transformers' FalconAttention ({found}): it knows "
        f"forward({', '.join(FALCON_INLINE[1:])}) (ported) and forward({', '.join(FALCON_INTERFACE[1:])}) "
        f"(attention interface). {version_hint()}.")
