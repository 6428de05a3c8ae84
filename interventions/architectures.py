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

from .ported_attention import AttentionPort, falcon_port
from .sites import LAYER_SITES, MODEL_SITES


def _never(config: Any) -> bool:
    return False


def _always(config: Any) -> bool:
    return True


def _no_value(config: Any) -> float | None:
    return None


def fixed_layout(name: str) -> Callable[[Any], str]:
    """A ``qkv_layout`` reader that gives ``name`` on every config."""
    def read(config: Any) -> str:
        return name
    read.__qualname__ = f"fixed_layout({name!r})"
    return read


def config_flag(name: str, default: bool) -> Callable[[Any], bool]:
    """A ``parallel_residual`` reader: the boolean config attribute ``name`` (``default`` when absent)."""
    def read(config: Any) -> bool:
        return bool(getattr(config, name, default))
    read.__qualname__ = f"config_flag({name!r}, {default})"
    return read


def config_value(name: str) -> Callable[[Any], float | None]:
    """A ``logit_scale`` / ``logit_softcap`` reader: the config attribute ``name`` (None when absent or 0)."""
    def read(config: Any) -> float | None:
        value = getattr(config, name, None)
        return float(value) if value else None
    read.__qualname__ = f"config_value({name!r})"
    return read


@dataclass(frozen=True)
class Architecture:
    """How one architecture family is built: module paths plus where contributions join the residual.

    Paths are dotted attribute paths. ``layers``, ``embed``, ``final_norm`` and ``unembed`` are relative
    to the causal-LM model; ``attn``, ``mlp``, ``attn_post_norm`` and ``mlp_post_norm`` relative to one
    decoder layer; ``o_proj`` relative to the attention module. A path may list alternatives as ``"a|b"``
    (names that changed across transformers releases).

    Residual wiring (what the sites mean is the same on every architecture, see docs/architectures.md):

    - ``parallel_residual(config)``: attention and MLP read the same input and are added together
      (GPT-J, NeoX, Falcon-7B, Cohere); there is no ``resid_mid``.
    - ``attn_post_norm`` / ``mlp_post_norm``: a norm applied to the sublayer's output *before* it is
      added to the residual ("sandwich" norms of Gemma 2/3, OLMo-2). ``attn_out`` / ``mlp_out`` are
      then read (and written) at that norm's output, so that they are the residual contributions.
    - ``mlp_output_mutated``: HF adds to the MLP's output tensor in place (Falcon), so the hook hands
      HF a copy and cached values stay what the site held.

    Attention and logits:

    - ``o_proj_layout``: ``"linear"`` for ``nn.Linear`` (weight [out, in]) or ``"conv1d"`` for GPT-2's
      Conv1D (weight [in, out]). ``head_z`` is the input of ``o_proj``, so fused q/k/v or gate/up
      projections (Phi-3, Falcon) and q/k norms (Qwen3, OLMo-2, Gemma 3) need no description.
    - ``pattern_attention(config)``: whether ``attn_pattern`` exists. The backend exposes the
      probabilities by swapping in an eager attention through transformers' attention interface
      (sliding windows come with the mask, soft-capping and GQA with the call); attention classes
      that compute attention inline name a resolver in ``attention_port`` (Falcon before transformers 5.25,
      see :mod:`lmscope.interventions.ported_attention`): given the attention module it returns the port to
      install (only on layers whose pattern is hooked) or None, and refuses an HF signature it does not know.
    - ``logit_scale(config)`` / ``logit_softcap(config)``: what the causal-LM head does after the
      unembedding (Cohere multiplies by ``logit_scale``; Gemma 2/3 soft-cap ``tanh(x/c)*c``).
    - ``position_embed``: a learned absolute position embedding added after ``embed`` (GPT-2), else None
      and ``embed`` (which includes any embedding scale HF applies inside the module, as Gemma's) is
      ``resid_pre.0``.

    Inside attention and MLP (the circuit-level sites, see :mod:`lmscope.interventions.projections`):

    - ``qkv``: the query/key/value projections relative to the attention module: three paths
      ``(q, k, v)`` for separate modules, or one path of a fused module whose output ``qkv_layout(config)``
      describes (``"concat"``, ``"interleaved"`` or ``"grouped"``). ``q``/``k``/``v`` are those outputs,
      before any q/k norm and rotary. None: those sites are unavailable.
    - ``mlp_in`` / ``mlp_down``: relative to the MLP module, the projection whose output is the
      pre-activation (the gate on gated MLPs; ``mlp_in_fused`` when it is the first half of a fused
      gate/up projection, Phi-3) and the output projection, whose input is ``mlp_post``. None (MoE
      blocks): ``mlp_pre``/``mlp_post`` are unavailable. ``o_proj_layout`` also gives ``mlp_down``'s layout.
    - ``rot_q``/``rot_k``/``attn_scores`` are read where the attention calls transformers' attention
      interface, so they need no path (``attn_scores`` follows ``pattern_attention``).

    Input norms (relative to one decoder layer; ``a|b`` alternatives, a missing or None module is skipped):

    - ``attn_norm`` / ``mlp_norm``: the norm whose output the attention / the MLP reads (``ln1`` / ``ln2``),
      None where the block reads the stream as is (OLMo-2). Parallel blocks may share one (GPT-J, Cohere).
      Edge-level circuits apply them to per-edge inputs; the architecture battery checks
      ``ln1 = attn_norm(resid_pre)`` and ``ln2 = mlp_norm(resid_mid or resid_pre)`` on every entry.

    ``inferred`` marks an adapter guessed from the module tree for an unregistered model type.
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
    parallel_residual: Callable[[Any], bool] = field(default=_never)
    attn_post_norm: str | None = None
    mlp_post_norm: str | None = None
    mlp_output_mutated: bool = False
    pattern_attention: Callable[[Any], bool] = field(default=_always)
    attention_port: Callable[[nn.Module], AttentionPort | None] | None = None
    logit_scale: Callable[[Any], float | None] = field(default=_no_value)
    logit_softcap: Callable[[Any], float | None] = field(default=_no_value)
    position_embed: str | None = None
    qkv: str | tuple[str, str, str] | None = None
    qkv_layout: Callable[[Any], str] = field(default=fixed_layout("concat"))
    mlp_in: str | None = None
    mlp_in_fused: bool = False
    mlp_down: str | None = None
    attn_norm: str | None = "input_layernorm"
    mlp_norm: str | None = "post_attention_layernorm|input_layernorm"
    inferred: bool = False

    def available_sites(self, config: Any) -> frozenset[str]:
        kinds = set(LAYER_SITES) | set(MODEL_SITES)
        if self.parallel_residual(config):
            kinds.discard("resid_mid")
        if not self.pattern_attention(config):
            kinds -= {"attn_pattern", "attn_scores"}
        if self.qkv is None:
            kinds -= {"q", "k", "v"}
        if self.mlp_in is None or self.mlp_down is None:
            kinds -= {"mlp_pre", "mlp_post"}
        return frozenset(kinds)

    def qkv_path(self, config: Any, layer: int, kind: str) -> tuple[str, str]:
        """``(module path, layout)`` of the projection whose output holds ``kind`` (q, k or v) of ``layer``."""
        assert self.qkv is not None
        attn = f"{self.layers}.{layer}.{self.attn}"
        if isinstance(self.qkv, tuple):
            return f"{attn}.{self.qkv['qkv'.index(kind)]}", "separate"
        return f"{attn}.{self.qkv}", self.qkv_layout(config)

    def mlp_paths(self, layer: int) -> tuple[str, str]:
        """``(pre-activation projection, output projection)`` module paths of ``layer``'s MLP."""
        assert self.mlp_in is not None and self.mlp_down is not None
        mlp = f"{self.layers}.{layer}.{self.mlp}"
        return f"{mlp}.{self.mlp_in}", f"{mlp}.{self.mlp_down}"

    def attn_out_path(self, layer: int) -> str:
        """The module whose output is layer ``layer``'s attention contribution to the residual."""
        return f"{self.layers}.{layer}.{self.attn_post_norm or self.attn}"

    def mlp_out_path(self, layer: int) -> str:
        """The module whose output is layer ``layer``'s MLP contribution to the residual."""
        return f"{self.layers}.{layer}.{self.mlp_post_norm or self.mlp}"

    def input_norm(self, layer_module: nn.Module, which: str) -> nn.Module | None:
        """The norm module whose output the attention (``which="attn"``) or the MLP (``"mlp"``) of a decoder
        layer reads, or None when it reads the stream as is."""
        path = self.attn_norm if which == "attn" else self.mlp_norm
        for option in (path or "").split("|"):
            module = getattr(layer_module, option, None) if option else None
            if isinstance(module, nn.Module):
                return module
        return None

    def finish_logits(self, config: Any, logits: torch.Tensor) -> torch.Tensor:
        """Apply the head's logit scale and soft-cap (in HF's order) to unembedding outputs."""
        scale, cap = self.logit_scale(config), self.logit_softcap(config)
        if scale is not None:
            logits = logits * scale
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits


_SEPARATE_QKV = ("q_proj", "k_proj", "v_proj")
_LLAMA_LIKE: dict[str, Any] = dict(layers="model.layers", embed="model.embed_tokens", final_norm="model.norm",
                                   unembed="lm_head", attn="self_attn", mlp="mlp", o_proj="o_proj",
                                   qkv=_SEPARATE_QKV, mlp_in="gate_proj", mlp_down="down_proj")
_MOE: dict[str, Any] = dict(mlp_in=None, mlp_down=None)  # no single neuron activation: mlp_pre/post refused
_SANDWICH: dict[str, Any] = dict(attn_post_norm="post_attention_layernorm", mlp_post_norm="post_feedforward_layernorm",
                                 mlp_norm="pre_feedforward_layernorm")
_SOFTCAP = config_value("final_logit_softcapping")

ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    """Add (or replace) an adapter; every ``config.model_type`` in ``arch.model_types`` maps to it."""
    for model_type in arch.model_types:
        ARCHITECTURES[model_type] = arch
    return arch


# LLaMA-shaped, sequential, pre-norm only (q/k norms live inside attn)
for _type in ("llama", "mistral", "qwen2", "qwen3", "smollm3"):
    register_architecture(Architecture(name=_type, model_types=(_type,), **_LLAMA_LIKE))
for _type in ("mixtral", "qwen2_moe", "qwen3_moe"):
    register_architecture(Architecture(name=_type, model_types=(_type,), **{**_LLAMA_LIKE, **_MOE}))
register_architecture(Architecture(name="phi3", model_types=("phi3",), **{
    **_LLAMA_LIKE, "qkv": "qkv_proj", "mlp_in": "gate_up_proj", "mlp_in_fused": True}))
register_architecture(Architecture(name="gemma", model_types=("gemma",), logit_softcap=_SOFTCAP, **_LLAMA_LIKE))
for _type in ("gemma2", "gemma3_text"):
    register_architecture(Architecture(name=_type, model_types=(_type,), logit_softcap=_SOFTCAP,
                                       **_SANDWICH, **_LLAMA_LIKE))
register_architecture(Architecture(name="olmo2", model_types=("olmo2",),  # post-norms only: blocks read the stream
                                   **{**_SANDWICH, "attn_norm": None, "mlp_norm": None}, **_LLAMA_LIKE))
register_architecture(Architecture(name="stablelm", model_types=("stablelm",),
                                   parallel_residual=config_flag("use_parallel_residual", False), **_LLAMA_LIKE))
register_architecture(Architecture(name="cohere", model_types=("cohere",), parallel_residual=_always,
                                   logit_scale=config_value("logit_scale"), **_LLAMA_LIKE))
register_architecture(Architecture(
    name="gpt_neox", model_types=("gpt_neox",), layers="gpt_neox.layers", embed="gpt_neox.embed_in",
    final_norm="gpt_neox.final_layer_norm", unembed="lm_head|embed_out", attn="attention", mlp="mlp", o_proj="dense",
    parallel_residual=config_flag("use_parallel_residual", True), qkv="query_key_value",
    qkv_layout=fixed_layout("interleaved"), mlp_in="dense_h_to_4h", mlp_down="dense_4h_to_h",
    mlp_norm="post_attention_layernorm",
))
register_architecture(Architecture(
    name="gpt2", model_types=("gpt2",), layers="transformer.h", embed="transformer.wte",
    final_norm="transformer.ln_f", unembed="lm_head", attn="attn", mlp="mlp", o_proj="c_proj",
    o_proj_layout="conv1d", position_embed="transformer.wpe", qkv="c_attn", mlp_in="c_fc", mlp_down="c_proj",
    attn_norm="ln_1", mlp_norm="ln_2",
))
register_architecture(Architecture(
    name="gptj", model_types=("gptj",), layers="transformer.h", embed="transformer.wte",
    final_norm="transformer.ln_f", unembed="lm_head", attn="attn", mlp="mlp", o_proj="out_proj",
    parallel_residual=_always, qkv=_SEPARATE_QKV, mlp_in="fc_in", mlp_down="fc_out", attn_norm="ln_1", mlp_norm="ln_1",
))


def _falcon_parallel(config: Any) -> bool:
    return bool(getattr(config, "parallel_attn", True) or getattr(config, "new_decoder_architecture", False))


def _falcon_qkv_layout(config: Any) -> str:
    """Falcon's fused query_key_value: per kv group (new_decoder_architecture), [q | k | v] (multi-query), or
    per head (otherwise)."""
    if getattr(config, "new_decoder_architecture", False):
        return "grouped"
    return "concat" if getattr(config, "multi_query", False) else "interleaved"


register_architecture(Architecture(
    name="falcon", model_types=("falcon",), layers="transformer.h", embed="transformer.word_embeddings",
    final_norm="transformer.ln_f", unembed="lm_head", attn="self_attention", mlp="mlp", o_proj="dense",
    parallel_residual=_falcon_parallel, mlp_output_mutated=True,
    pattern_attention=lambda config: not getattr(config, "alibi", False), attention_port=falcon_port,
    qkv="query_key_value", qkv_layout=_falcon_qkv_layout, mlp_in="dense_h_to_4h", mlp_down="dense_4h_to_h",
    attn_norm="ln_attn|input_layernorm", mlp_norm="ln_mlp|post_attention_layernorm|input_layernorm",
))


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


REGISTER_HINT = (
    "To add one, describe its module paths with lmscope.interventions.Architecture(name=..., model_types=(...,), "
    "layers=..., embed=..., final_norm=..., unembed=..., attn=..., mlp=..., o_proj=..., plus parallel_residual / "
    "attn_post_norm / mlp_post_norm where they apply) and call lmscope.interventions.register_architecture(...); "
    "see docs/architectures.md."
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
        n_kv_heads=int(getattr(config, "num_key_value_heads", None) or getattr(config, "num_kv_heads", None)
                       or n_heads),
        d_model=d_model, d_head=int(d_head), d_vocab=d_vocab, n_ctx=int(n_ctx) if n_ctx else None,
    )


def weight_in_out(module: nn.Module, layout: str) -> torch.Tensor:
    """A projection's weight as ``[in, out]`` (``nn.Linear`` stores ``[out, in]``, GPT-2's Conv1D ``[in, out]``)."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight.T if layout == "linear" else weight


def output_projection(o_proj: nn.Module, layout: str, n_heads: int,
                      d_head: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention output projection as per-head matrices ``W_O[h]: d_head -> d_model`` plus bias.

    Returns ``(W_O [n_heads, d_head, d_model], b_O [d_model] or None)`` so that the projection's output is
    ``einsum('bphd,hdm->bpm', head_z, W_O) + b_O`` (``attn_out`` before any post-attention norm).
    """
    w_in_out = weight_in_out(o_proj, layout)  # [n_heads*d_head, d_model]
    return w_in_out.reshape(n_heads, d_head, -1), getattr(o_proj, "bias", None)
