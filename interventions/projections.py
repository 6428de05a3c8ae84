"""Where q, k, v and the MLP neurons sit inside a projection's output, and how a write is put back exactly.

A site such as ``q.L`` is a region of one module's output: the whole output of a separate ``q_proj``, or a
slice of a fused one (GPT-2's ``c_attn``, GPT-NeoX's and Falcon's ``query_key_value``, Phi-3's ``qkv_proj``
and ``gate_up_proj``). :func:`region` names that region as a *view* of the output tensor, so reading is a
reshape and writing is ``clone`` + ``copy_`` into the same view of the clone: every other element keeps its
exact value, and writing back an unchanged value reproduces the output bit for bit.

Layouts of a fused q/k/v output (``Architecture.qkv_layout`` returns one of these names per config):

- ``"separate"``: three modules, each output ``[..., heads * d_head]`` (LLaMA, GPT-J, ...);
- ``"concat"``: ``[q (n_heads*d_head) | k (n_kv*d_head) | v (n_kv*d_head)]`` (GPT-2, Phi-3, multi-query
  Falcon);
- ``"interleaved"``: per head ``[q, k, v]``, i.e. ``[..., n_heads, 3, d_head]`` (GPT-NeoX, Falcon without
  multi-query);
- ``"grouped"``: per key/value group its queries then its key and value, ``[..., n_kv, group + 2, d_head]``
  (Falcon's ``new_decoder_architecture``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QKV_LAYOUTS = ("separate", "concat", "interleaved", "grouped")
_WHICH = {"q": 0, "k": 1, "v": 2}


@dataclass(frozen=True)
class HeadShape:
    """The head counts a q/k/v split needs."""

    n_heads: int
    n_kv_heads: int
    d_head: int

    def heads(self, kind: str) -> int:
        return self.n_heads if kind == "q" else self.n_kv_heads


def qkv_region(raw: torch.Tensor, kind: str, layout: str, shape: HeadShape) -> torch.Tensor:
    """The view of projection output ``raw`` ``[..., features]`` that holds ``kind`` (``"q"``, ``"k"``, ``"v"``)."""
    h, kv, d = shape.n_heads, shape.n_kv_heads, shape.d_head
    which = _WHICH[kind]
    if layout == "separate":
        return raw.unflatten(-1, (shape.heads(kind), d))
    if layout == "concat":
        start = (0, h * d, (h + kv) * d)[which]
        return raw[..., start:start + shape.heads(kind) * d].unflatten(-1, (shape.heads(kind), d))
    if layout == "interleaved":
        return raw.unflatten(-1, (h, 3, d))[..., which, :]
    if layout == "grouped":
        groups = raw.unflatten(-1, (kv, h // kv + 2, d))
        return groups[..., :-2, :] if kind == "q" else groups[..., -2 if kind == "k" else -1, :]
    raise AssertionError(f"unknown q/k/v layout {layout!r}; one of {QKV_LAYOUTS}")


def read_qkv(raw: torch.Tensor, kind: str, layout: str, shape: HeadShape) -> torch.Tensor:
    """``kind``'s value ``[..., heads, d_head]`` (``n_kv_heads`` heads for k and v)."""
    return qkv_region(raw, kind, layout, shape).reshape(*raw.shape[:-1], shape.heads(kind), shape.d_head)


def write_qkv(raw: torch.Tensor, new: torch.Tensor, kind: str, layout: str, shape: HeadShape) -> torch.Tensor:
    """A copy of ``raw`` with ``kind``'s region replaced by ``new`` (every other element unchanged)."""
    out = raw.clone()
    view = qkv_region(out, kind, layout, shape)
    view.copy_(new.reshape(view.shape))
    return out


def read_gate(raw: torch.Tensor, fused_halves: bool) -> torch.Tensor:
    """The pre-activation neurons of an MLP input projection's output (the first half of a fused gate/up)."""
    return raw[..., : raw.shape[-1] // 2] if fused_halves else raw


def write_gate(raw: torch.Tensor, new: torch.Tensor, fused_halves: bool) -> torch.Tensor:
    """``raw`` with the pre-activation neurons replaced by ``new`` (the up half of a fused projection kept)."""
    if not fused_halves:
        return new
    out = raw.clone()
    out[..., : raw.shape[-1] // 2] = new
    return out
