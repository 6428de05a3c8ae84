"""One declarative adapter per architecture: where each site lives inside the HF module tree.

This table is the only place that knows HF module paths. To support a new
architecture, describe it with :class:`Architecture` and call
:func:`register_architecture`; nothing else needs to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .errors import UnsupportedArchitectureError
from .sites import LAYER_SITES, MODEL_SITES


@dataclass(frozen=True)
class Architecture:
    """Module paths of one architecture family (dotted attribute paths).

    ``layers``, ``embed``, ``final_norm`` and ``unembed`` are relative to the
    causal-LM model; ``attn``, ``mlp`` relative to one decoder layer; ``o_proj``
    relative to the attention module. ``o_proj_layout`` is ``"linear"`` for
    ``nn.Linear`` (weight [out, in]) or ``"conv1d"`` for GPT-2's Conv1D (weight [in, out]).
    A path may list alternatives as ``"a|b"`` (names that changed across transformers releases).
    ``parallel_residual`` tells from the config whether attention and MLP read the
    same input (then there is no ``resid_mid``).
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    embed: str
    final_norm: str
    unembed: str
    attn: str
    mlp: str
    o_proj: str
    o_proj_layout: str = "linear"
    parallel_residual: Callable[[Any], bool] = field(default=lambda config: False)

    def available_sites(self, config: Any) -> frozenset[str]:
        kinds = set(LAYER_SITES) | set(MODEL_SITES)
        if self.parallel_residual(config):
            kinds.discard("resid_mid")
        return frozenset(kinds)


_LLAMA_LIKE: dict[str, Any] = dict(layers="model.layers", embed="model.embed_tokens", final_norm="model.norm",
                   unembed="lm_head", attn="self_attn", mlp="mlp", o_proj="o_proj")

ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    """Add (or replace) an adapter; every ``config.model_type`` in ``arch.model_types`` maps to it."""
    for model_type in arch.model_types:
        ARCHITECTURES[model_type] = arch
    return arch


register_architecture(Architecture(name="llama", model_types=("llama",), **_LLAMA_LIKE))
register_architecture(Architecture(name="mistral", model_types=("mistral",), **_LLAMA_LIKE))
register_architecture(Architecture(name="qwen2", model_types=("qwen2",), **_LLAMA_LIKE))
register_architecture(Architecture(name="gemma", model_types=("gemma",), **_LLAMA_LIKE))
register_architecture(Architecture(
    name="gpt_neox", model_types=("gpt_neox",), layers="gpt_neox.layers", embed="gpt_neox.embed_in",
    final_norm="gpt_neox.final_layer_norm", unembed="lm_head|embed_out", attn="attention", mlp="mlp", o_proj="dense",
    parallel_residual=lambda config: bool(getattr(config, "use_parallel_residual", True)),
))
register_architecture(Architecture(
    name="gpt2", model_types=("gpt2",), layers="transformer.h", embed="transformer.wte",
    final_norm="transformer.ln_f", unembed="lm_head", attn="attn", mlp="mlp", o_proj="c_proj",
    o_proj_layout="conv1d",
))


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


def detect_architecture(hf_model: nn.Module) -> Architecture:
    """Pick the adapter from ``config.model_type``; raise a helpful error when there is none."""
    config = getattr(hf_model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    raise UnsupportedArchitectureError(
        f"No lmscope adapter for model_type={model_type!r} ({type(hf_model).__name__}). "
        f"Supported: {', '.join(supported_model_types())}. To add one, describe its module paths with "
        "lmscope.interventions.Architecture(name=..., model_types=(...,), layers=..., embed=..., final_norm=..., "
        "unembed=..., attn=..., mlp=..., o_proj=...) and call lmscope.interventions.register_architecture(...)."
    )


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Follow a dotted attribute path (integers index into ModuleLists); ``a|b`` tries ``a`` then ``b``."""
    if "|" in path:
        options = path.split("|")
        for option in options[:-1]:
            try:
                return get_module(root, option)
            except (AttributeError, IndexError):
                continue
        return get_module(root, options[-1])
    mod: Any = root
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


@dataclass(frozen=True)
class Dimensions:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int | None


def dimensions(config: Any, d_vocab: int) -> Dimensions:
    """Read sizes from an HF config (attribute maps make GPT-2's names work too)."""
    n_heads = int(config.num_attention_heads)
    d_model = int(config.hidden_size)
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    n_ctx = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return Dimensions(
        n_layers=int(config.num_hidden_layers), n_heads=n_heads,
        n_kv_heads=int(getattr(config, "num_key_value_heads", None) or n_heads),
        d_model=d_model, d_head=int(d_head), d_vocab=d_vocab, n_ctx=int(n_ctx) if n_ctx else None,
    )


def output_projection(o_proj: nn.Module, layout: str, n_heads: int,
                      d_head: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention output projection as per-head matrices ``W_O[h]: d_head -> d_model`` plus bias.

    Returns ``(W_O [n_heads, d_head, d_model], b_O [d_model] or None)`` so that
    ``attn_out = einsum('bphd,hdm->bpm', head_z, W_O) + b_O``.
    """
    weight = o_proj.weight
    assert isinstance(weight, torch.Tensor)
    w_in_out = weight.T if layout == "linear" else weight  # [n_heads*d_head, d_model]
    return w_in_out.reshape(n_heads, d_head, -1), getattr(o_proj, "bias", None)
