"""Guess an adapter for an unregistered model type from its module tree (LLaMA- or NeoX-shaped).

A guess is only a candidate: :func:`lmscope.interventions.adapter_checks.accept_inferred` runs the
exact site identities on a probe forward before a :class:`HookedModel` accepts it. Post-sublayer
("sandwich") norms and parallel blocks are read from the layer's module names and the config, the
same facts the registered adapters state by hand.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from .architectures import (
    ARCHITECTURES,
    REGISTER_HINT,
    Architecture,
    config_value,
    get_module,
    supported_model_types,
)
from .errors import UnsupportedArchitectureError

_LLAMA_SHAPE: dict[str, Any] = dict(layers="model.layers", embed="model.embed_tokens", final_norm="model.norm",
                    unembed="lm_head", attn="self_attn", mlp="mlp", o_proj="o_proj")
_NEOX_SHAPE: dict[str, Any] = dict(layers="gpt_neox.layers", embed="gpt_neox.embed_in",
                                   final_norm="gpt_neox.final_layer_norm",
                   unembed="embed_out|lm_head", attn="attention", mlp="mlp", o_proj="dense")
_PARALLEL_FLAGS = ("use_parallel_residual", "parallel_attn", "parallel_residual", "parallel_block")


def _has(root: nn.Module, path: str) -> bool:
    try:
        return isinstance(get_module(root, path), nn.Module)
    except (AttributeError, IndexError, TypeError):
        return False


def _fits(hf_model: nn.Module, shape: dict[str, str]) -> bool:
    layer0 = f"{shape['layers']}.0"
    paths = [shape["embed"], shape["final_norm"], shape["unembed"], f"{layer0}.{shape['attn']}.{shape['o_proj']}",
             f"{layer0}.{shape['mlp']}"]
    return all(_has(hf_model, p) for p in paths) and isinstance(get_module(hf_model, shape["layers"]), nn.ModuleList)


def _parallel_reader(default: bool) -> Any:
    def read(config: Any) -> bool:
        for flag in _PARALLEL_FLAGS:
            if getattr(config, flag, None) is not None:
                return bool(getattr(config, flag))
        return default
    return read


def infer_architecture(hf_model: nn.Module) -> Architecture | None:
    """An unverified adapter (``inferred=True``) when the tree is LLaMA- or NeoX-shaped, else None."""
    model_type = str(getattr(getattr(hf_model, "config", None), "model_type", None))
    common: dict[str, Any] = dict(model_types=(model_type,), inferred=True, logit_scale=config_value("logit_scale"),
                  logit_softcap=config_value("final_logit_softcapping"))
    if _fits(hf_model, _LLAMA_SHAPE):
        layer = get_module(hf_model, "model.layers.0")
        names = {name for name, child in layer.named_children() if child is not None}
        post: dict[str, Any] = {"attn_norm": "input_layernorm" if "input_layernorm" in names else None}
        if "post_feedforward_layernorm" in names:  # sandwich norms: Gemma 2/3 (pre_feedforward) or OLMo-2 (no pre)
            post["mlp_post_norm"] = "post_feedforward_layernorm"
            post["mlp_norm"] = "pre_feedforward_layernorm" if "pre_feedforward_layernorm" in names else None
            if "post_attention_layernorm" in names:
                post["attn_post_norm"] = "post_attention_layernorm"
        # one pre-norm and no second norm: attention and MLP read the same input (Cohere-shaped)
        single_norm = "input_layernorm" in names and not names & {"post_attention_layernorm",
                                                                    "pre_feedforward_layernorm"}
        return Architecture(name=f"inferred-llama-shaped:{model_type}", **_LLAMA_SHAPE, **post,
                            parallel_residual=_parallel_reader(single_norm), **common)
    if _fits(hf_model, _NEOX_SHAPE):
        return Architecture(name=f"inferred-neox-shaped:{model_type}", **_NEOX_SHAPE,
                            parallel_residual=_parallel_reader(True), **common)
    return None


def closest_families(hf_model: nn.Module, n: int = 3) -> list[str]:
    """Registered model types whose module paths this model has most of (ties: closest name)."""
    model_type = str(getattr(getattr(hf_model, "config", None), "model_type", ""))
    seen: dict[str, Architecture] = {arch.name: arch for arch in ARCHITECTURES.values()}

    def score(arch: Architecture) -> tuple[int, float]:
        layer0 = f"{arch.layers}.0"
        paths = [arch.layers, arch.embed, arch.final_norm, arch.unembed, f"{layer0}.{arch.attn}",
                 f"{layer0}.{arch.mlp}", f"{layer0}.{arch.attn}.{arch.o_proj}"]
        post = [f"{layer0}.{p}" for p in (arch.attn_post_norm, arch.mlp_post_norm) if p]
        hits = sum(_has(hf_model, p) for p in paths) - 2 * sum(not _has(hf_model, p) for p in post)
        return hits, difflib.SequenceMatcher(None, model_type, arch.name).ratio()
    ranked = sorted(seen.values(), key=score, reverse=True)
    return [arch.model_types[0] for arch in ranked[:n]]


def detect_architecture(hf_model: nn.Module) -> Architecture:
    """Pick the adapter from ``config.model_type``; else infer a LLaMA- or NeoX-shaped one from the module tree
    (``inferred=True``: the caller must verify it on a probe forward); else raise a helpful error."""
    config = getattr(hf_model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    inferred = infer_architecture(hf_model)
    if inferred is not None:
        return inferred
    raise UnsupportedArchitectureError(
        f"No lmscope adapter for model_type={model_type!r} ({type(hf_model).__name__}), and its module tree is "
        f"neither LLaMA-shaped (model.layers[i].self_attn.o_proj / .mlp) nor NeoX-shaped "
        f"(gpt_neox.layers[i].attention.dense / .mlp). Closest supported families: "
        f"{', '.join(closest_families(hf_model))} (all: {', '.join(supported_model_types())}). {REGISTER_HINT}"
    )
