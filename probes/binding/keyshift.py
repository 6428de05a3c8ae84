"""Key-only position shift: the authors' variant of the position-independence test (keys re-rotated).

:func:`key_position_shift` makes every attention layer see chosen tokens' *keys* at shifted positions while
every query (the moved tokens' own included) keeps its position. With rotary embeddings
``RoPE(k, p + d) = R(d) RoPE(k, p) = RoPE(R(d) k, p)`` (the per-plane rotations commute), so rotating the
``k_proj`` output by ``d`` before the model applies its own RoPE is exactly a key at position ``p + d``.
Moving tokens through ``position_ids`` instead (:func:`lmscope.probes.binding.position_shift` with
``keys_only=False``) moves keys and queries together.

Supported: models whose attention applies full-width ``rotate_half`` RoPE to a ``k_proj`` output, with a
position-linear frequency table (default, linear and llama3 RoPE) and no per-head key norm (a norm between
``k_proj`` and RoPE does not commute with the rotation). Others are refused with an ``InputError``.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import torch

from lmscope.interventions.errors import InputError

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


def _rope_parts(model: HookedModel) -> tuple[Any, Any, list[Any]]:
    """The rotary-embedding module, the attention module's ``rotate_half`` and every layer's ``k_proj``."""
    name = model.arch.name
    rotary = [m for n, m in model.hf_model.named_modules() if n.split(".")[-1] == "rotary_emb"]
    if len(rotary) != 1:
        raise InputError(f"Key-only position shifts need one rotary embedding; this {name} model has "
                         f"{len(rotary)} (supported: llama-style RoPE models, e.g. SmolLM2, Llama, Qwen2).")
    rope = rotary[0]
    rope_type = str(getattr(rope, "rope_type", "default"))
    if rope_type not in ("default", "linear", "llama3") or float(getattr(rope, "attention_scaling", 1.0)) != 1.0:
        raise InputError(f"Key-only position shifts need position-linear RoPE (default, linear or llama3); this "
                         f"{name} model uses {rope_type!r}.")
    k_projs, rotate_half = [], None
    for i in range(model.n_layers):
        attn = model.module(f"{model.arch.layers}.{i}.{model.arch.attn}")
        if not hasattr(attn, "k_proj") or hasattr(attn, "k_norm"):
            raise InputError(f"Key-only position shifts need a k_proj and no key norm before RoPE; layer {i} of "
                             f"this {name} model has {'a k_norm' if hasattr(attn, 'k_norm') else 'no k_proj'}.")
        k_projs.append(attn.k_proj)
        rotate_half = getattr(inspect.getmodule(type(attn)), "rotate_half", None)
    if rotate_half is None or getattr(rope, "inv_freq", None) is None or 2 * rope.inv_freq.numel() != model.d_head:
        raise InputError(f"Key-only position shifts need full-width rotate_half RoPE; this {name} model does not "
                         "have it.")
    return rope, rotate_half, k_projs


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
    rope, rotate_half, k_projs = _rope_parts(model)
    if not isinstance(shifts, torch.Tensor) or shifts.dim() != 2 or shifts.is_floating_point():
        raise InputError("key_position_shift needs an int tensor of shifts [batch, seq].")
    d_head = model.d_head

    def hook(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if out.shape[:2] != shifts.shape:
            raise InputError(f"key_position_shift got shifts for {tuple(shifts.shape)} (batch, seq) but the forward "
                             f"has {tuple(out.shape[:2])}.")
        k = out.view(*out.shape[:2], -1, d_head)  # [batch, seq, kv_heads, d_head]
        cos, sin = rope(k, shifts.to(k.device))  # [batch, seq, d_head]: R(d) for each token
        return (k * cos[:, :, None] + rotate_half(k) * sin[:, :, None]).reshape(out.shape)

    handles = [m.register_forward_hook(hook) for m in k_projs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
