"""Key-only position shift: the authors' variant of the position-independence test (keys re-rotated).

:func:`key_position_shift` makes every attention layer see chosen tokens' *keys* at shifted positions while
every query (the moved tokens' own included) keeps its position. With rotary embeddings
``RoPE(k, p + d) = R(d) RoPE(k, p) = RoPE(R(d) k, p)`` (the per-plane rotations commute), so rotating the
``k_proj`` output by ``d`` before the model applies its own RoPE is exactly a key at position ``p + d``.
Moving tokens through ``position_ids`` instead (:func:`lmscope.probes.binding.position_shift` with
``keys_only=False``) moves keys and queries together.

Supported: models whose attention applies full-width ``rotate_half`` RoPE to the key, with a
position-linear frequency table (default, linear and llama3 RoPE), either directly on the ``k_proj`` output
or after a per-head key norm (Qwen3, Gemma 3: the rotation then acts on the ``k_norm`` output, where it
still commutes with RoPE). A rotary module with one table per layer type (Gemma 3's sliding and global
layers, different thetas) is read per layer. Others are refused with an ``InputError``.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import torch

from lmscope.interventions.errors import InputError
from lmscope.interventions.local import local_hooks

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


class _RopeParts:
    """What the key hooks need: the rotary module, ``rotate_half``, per layer the module whose output is the
    key right before RoPE (``k_norm`` if there is one, else ``k_proj``) and the layer's RoPE type key."""

    def __init__(self, rope: Any, rotate_half: Any, modules: list[Any], normed: bool,
                 layer_types: list[str | None]) -> None:
        self.rope, self.rotate_half, self.modules, self.normed, self.layer_types = \
            rope, rotate_half, modules, normed, layer_types

    def cos_sin(self, k: torch.Tensor, positions: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        lt = self.layer_types[layer]
        out = self.rope(k, positions) if lt is None else self.rope(k, positions, lt)
        return out[0], out[1]


def _rope_parts(model: HookedModel) -> _RopeParts:
    """The rotary embedding, ``rotate_half`` and each layer's pre-RoPE key module, or an ``InputError``."""
    name = model.arch.name
    rotary = [m for n, m in model.hf_model.named_modules() if n.split(".")[-1] == "rotary_emb"]
    if len(rotary) != 1:
        raise InputError(f"Key-only position shifts need one rotary embedding; this {name} model has "
                         f"{len(rotary)} (supported: llama-style RoPE models, e.g. SmolLM2, Llama, Qwen2/3, "
                         "Gemma 3).")
    rope = rotary[0]
    raw_type: Any = getattr(rope, "rope_type", "default")
    config: Any = model.hf_model.config
    per_type = isinstance(raw_type, dict)
    if per_type and "layer_type" not in inspect.signature(rope.forward).parameters:
        raise InputError(f"Key-only position shifts: this {name} model's rotary embedding has per-layer-type "
                         "tables but no layer_type argument.")
    types: dict[str | None, Any] = dict(raw_type) if per_type else {None: raw_type}
    for lt, rope_type in types.items():
        scaling = getattr(rope, f"{lt}_attention_scaling" if per_type else "attention_scaling", 1.0)
        if str(rope_type) not in ("default", "linear", "llama3") or float(scaling) != 1.0:
            raise InputError(f"Key-only position shifts need position-linear RoPE (default, linear or llama3); "
                             f"this {name} model uses {rope_type!r}{f' on its {lt} layers' if lt else ''}.")
        inv_freq = getattr(rope, f"{lt}_inv_freq" if per_type else "inv_freq", None)
        if inv_freq is None or 2 * inv_freq.numel() != model.d_head:
            raise InputError(f"Key-only position shifts need full-width rotate_half RoPE; this {name} model does "
                             "not have it.")
    layer_types: list[str | None] = [None] * model.n_layers
    if per_type:
        declared = list(getattr(config, "layer_types", None) or [])
        if len(declared) != model.n_layers or any(t not in types for t in declared):
            raise InputError(f"Key-only position shifts: this {name} model's layer types {declared} do not match "
                             f"its rotary tables {sorted(str(t) for t in types)}.")
        layer_types = declared
    modules, rotate_half, normed = [], None, False
    for i in range(model.n_layers):
        attn = model.module(f"{model.arch.layers}.{i}.{model.arch.attn}")
        if not hasattr(attn, "k_proj"):
            raise InputError(f"Key-only position shifts need a k_proj; layer {i} of this {name} model has none.")
        normed = hasattr(attn, "k_norm")
        modules.append(attn.k_norm if normed else attn.k_proj)
        rotate_half = getattr(inspect.getmodule(type(attn)), "rotate_half", None)
    if rotate_half is None:
        raise InputError(f"Key-only position shifts need full-width rotate_half RoPE; this {name} model does not "
                         "have it.")
    return _RopeParts(rope, rotate_half, modules, normed, layer_types)


def key_shift_unsupported(model: HookedModel) -> str | None:
    """Why :func:`key_position_shift` cannot run on ``model`` (None when it can)."""
    try:
        _rope_parts(model)
    except InputError as err:
        return str(err)
    return None


@contextmanager
def key_position_shift(model: HookedModel, shifts: torch.Tensor) -> Iterator[None]:
    """Within the block, forwards see token ``[row, col]``'s key at its position plus ``shifts[row, col]``.

    ``shifts`` is an int tensor ``[batch, seq]`` in the layout of the forward's ``input_ids`` (padding
    included; give 0 there). Queries, values and every other activation are computed as usual. Hooks are
    removed on exit. Every forward inside must have exactly that batch and length.
    """
    parts = _rope_parts(model)
    if not isinstance(shifts, torch.Tensor) or shifts.dim() != 2 or shifts.is_floating_point():
        raise InputError("key_position_shift needs an int tensor of shifts [batch, seq].")
    d_head = model.d_head
    batch, seq = shifts.shape

    def rotate(k: torch.Tensor, layer: int, seq_axis: int) -> torch.Tensor:
        """``k`` [batch, seq, heads, d] (seq_axis 1) or [batch, heads, seq, d] (seq_axis 2), rotated by R(shift)."""
        cos, sin = parts.cos_sin(k, shifts.to(k.device), layer)  # [batch, seq, d_head]: R(d) for each token
        cos, sin = (cos[:, :, None], sin[:, :, None]) if seq_axis == 1 else (cos[:, None], sin[:, None])
        return k * cos + parts.rotate_half(k) * sin

    def make_hook(layer: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            if not parts.normed:  # k_proj output [batch, seq, kv_heads * d_head]
                if out.shape[:2] != shifts.shape:
                    raise InputError(f"key_position_shift got shifts for {tuple(shifts.shape)} (batch, seq) but the "
                                     f"forward has {tuple(out.shape[:2])}.")
                return rotate(out.view(batch, seq, -1, d_head), layer, 1).reshape(out.shape)
            # k_norm output: [batch, seq, kv_heads, d] (Qwen3) or [batch, kv_heads, seq, d] (Gemma 3)
            if out.dim() != 4 or out.shape[0] != batch or seq not in out.shape[1:3]:
                raise InputError(f"key_position_shift got shifts for {tuple(shifts.shape)} (batch, seq) but the "
                                 f"forward's keys are {tuple(out.shape)}.")
            if out.shape[1] == out.shape[2]:
                raise InputError(f"key_position_shift cannot tell the sequence axis of keys {tuple(out.shape)} "
                                 "(as many tokens as key heads); use another prompt length.")
            return rotate(out, layer, 1 if out.shape[1] == seq else 2)
        return hook

    with local_hooks([(m, make_hook(i)) for i, m in enumerate(parts.modules)]):  # this context's forwards only
        yield
