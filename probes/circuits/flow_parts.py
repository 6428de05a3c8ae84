"""The exact per-layer decomposition behind information flow routes, and the proximity importances of its sums.

At layer ``L`` and query position ``i`` the residual stream is updated by sums of parts, read from one forward:

- **sequential blocks**: ``resid_mid[i] = resid_pre[i] + Σ_j c_ij + bias_i`` (the *attention sum*), then
  ``resid_post[i] = resid_mid[i] + mlp_out[i]`` (the *MLP sum*);
- **parallel blocks** (attention and MLP read the same input: GPT-NeoX, GPT-J, Falcon, Cohere):
  ``resid_post[i] = resid_pre[i] + Σ_j c_ij + bias_i + mlp_out[i]``, one sum.

``c_ij = f_i ⊙ Σ_h A_h[i, j] · (v_h[j] W_O,h)`` is what attention moves from source position ``j`` into ``i``
(every head summed; grouped-query head ``h`` reads value head ``h // (n_heads // n_kv_heads)``), and
``bias_i = f_i ⊙ b_O`` is the output projection's bias, a part of its own (it has no source position). Without a
post-attention norm ``f_i = 1``; with one (Gemma 2/3, OLMo-2) ``f_i`` is the per-channel factor that norm applied
to the summed heads in this forward, ``attn_out[i] / (Σ_h head_out[i, h] + b_O)`` (channels where that sum is 0
get 0): the same definition as :func:`lmscope.probes.circuits.nodes.head_contributions`, so the parts add up to
``attn_out`` exactly.

The decomposition reads the ``v`` site, i.e. the values as the projection produces them. Before using them it
checks, layer by layer, that ``Σ_j A[h, i, j] v[j]`` reproduces ``head_z`` (what the attention really output):
a model that transforms its values before the attention (a value norm) would fail that check, and is refused
with an error rather than decomposed inexactly.

Importance (Ferrando & Voita 2024): ``prox(c, total) = max(0, ||total||_1 - ||total - c||_1)``, divided by the
sum of the proximities of every part of that sum, so one sum's importances are >= 0 and add to 1. A sum where
no part is closer to the total than zero is (every proximity 0: rare, a cancelling sum) is *degenerate*: its
importances are all 0, and nothing flows through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.errors import UnsupportedArchitectureError
from lmscope.interventions.tolerance import max_error

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

#: Elements of one ``[queries, keys, d_model]`` block of attention parts held at once (float32: 64 MiB).
CHUNK_ELEMENTS = 1 << 24
#: Roundings allowed between ``head_z`` and the values check's ``pattern @ v`` (the pattern and values are stored
#: in the model's dtype, the product is recomputed in float32).
VALUE_CHECK_OPS = 8


def flow_sites(model: HookedModel) -> list[str]:
    """The sites one forward must record for :func:`layer_parts` (``attn_out`` only under post-attention norms)."""
    sites = ["resid_pre.*", "attn_pattern.*", "v.*", "head_z.*", "mlp_out.*"]
    return sites + (["attn_out.*"] if model.arch.attn_post_norm is not None else [])


@dataclass(frozen=True)
class LayerParts:
    """The parts of one layer's sums at query positions ``0..n-1`` (float32; batch of one).

    ``values[j, h]`` is ``v_h[j] W_O,h``; ``factor`` the post-attention norm's per-channel factor (None: 1).
    """

    parallel: bool
    resid: torch.Tensor  # [n, d]: resid_pre
    pattern: torch.Tensor  # [heads, n, n]
    values: torch.Tensor  # [n, heads, d]
    factor: torch.Tensor | None  # [n, d]
    bias: torch.Tensor | None  # [n, d]: factor * b_O
    mlp: torch.Tensor  # [n, d]: mlp_out

    @property
    def n(self) -> int:
        return int(self.resid.shape[0])

    def attention(self, queries: slice) -> torch.Tensor:
        """``[q, n, d]``: ``c_ij`` for the query positions ``queries`` and every source position ``j``."""
        parts = torch.einsum("hqk,khd->qkd", self.pattern[:, queries], self.values)
        return parts if self.factor is None else parts * self.factor[queries, None, :]

    def attention_sum(self) -> torch.Tensor:
        """``[n, d]``: ``Σ_j c_ij`` without holding every part."""
        total = torch.einsum("hqk,khd->qd", self.pattern, self.values)
        return total if self.factor is None else total * self.factor

    def totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(first sum, last sum)`` ``[n, d]`` each: ``resid_mid`` and ``resid_post`` on sequential blocks; on
        parallel blocks the first is ``resid_pre + attention`` (not a stream the model holds) and the last
        ``resid_post``."""
        first = self.resid + self.attention_sum() + (self.bias if self.bias is not None else 0)
        return first, first + self.mlp


def _post_norm_factor(pre: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """``attn_out / pre`` per channel, 0 where ``pre`` is 0 (the post-norm's action on this forward's sum)."""
    nonzero = pre != 0
    return torch.where(nonzero, attn_out / torch.where(nonzero, pre, torch.ones_like(pre)), torch.zeros_like(pre))


def check_values(pattern: torch.Tensor, values: torch.Tensor, head_z: torch.Tensor, layer: int,
                 dtype: torch.dtype) -> None:
    """Refuse a layer whose ``head_z`` [n, heads, d_head] is not ``pattern @ values`` (values already repeated per
    query head): the attention used values other than the ``v`` site, so the per-source split would not be exact."""
    recomputed = torch.einsum("hqk,khe->qhe", pattern, values)
    err, allowed = max_error(recomputed, head_z, dtype=dtype, n_ops=VALUE_CHECK_OPS,
                             scale=float(head_z.abs().max()) if head_z.numel() else 0.0)
    if err > allowed:
        raise UnsupportedArchitectureError(
            f"Layer {layer}: the attention's output (head_z) is not attn_pattern @ v (max error {err:.3g}, allowed "
            f"{allowed:.3g}): this model transforms its values before the attention (e.g. a value norm), so "
            "flow routes cannot split the attention exactly by source position.")


def layer_parts(model: HookedModel, cache: Any, layer: int, n: int) -> LayerParts:
    """The parts of layer ``layer``'s sums at positions ``0..n-1`` from a cache holding :func:`flow_sites` (one
    prompt); raises :class:`UnsupportedArchitectureError` when the values check fails (see the module docstring)."""
    pattern = cache[f"attn_pattern.{layer}"][0, :, :n, :n].float()
    kv = torch.arange(model.n_heads, device=pattern.device) // (model.n_heads // model.n_kv_heads)
    v = cache[f"v.{layer}"][0, :n].float()[:, kv]  # [n, heads, d_head]
    check_values(pattern, v, cache[f"head_z.{layer}"][0, :n].float(), layer, model.dtype)
    w_o, b_o = model.output_projection(layer)
    values = torch.einsum("khe,hed->khd", v, w_o.detach().float().to(v.device))
    bias = b_o.detach().float().to(v.device).expand(n, -1) if b_o is not None else None
    factor = None
    if model.arch.attn_post_norm is not None:
        pre = torch.einsum("hqk,khd->qd", pattern, values) + (bias if bias is not None else 0)
        factor = _post_norm_factor(pre, cache[f"attn_out.{layer}"][0, :n].float())
        bias = bias * factor if bias is not None else None
    return LayerParts(parallel=model.arch.parallel_residual(model.hf_model.config),
                      resid=cache[f"resid_pre.{layer}"][0, :n].float(), pattern=pattern, values=values,
                      factor=factor, bias=bias, mlp=cache[f"mlp_out.{layer}"][0, :n].float())


def proximity(total: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """``max(0, ||total||_1 - ||total - part||_1)`` over the last axis; ``total`` [n, d], ``part`` [n, d] or
    [n, k, d] (then ``total`` is broadcast over ``k``)."""
    t = total if part.dim() == total.dim() else total[:, None]
    return (t.abs().sum(-1) - (t - part).abs().sum(-1)).clamp_min(0)


@dataclass(frozen=True)
class Sum:
    """One sum of a layer at every query position: each part's importance (``"resid"``, ``"bias"``, ``"mlp"``:
    ``[n]``; ``"attn"``: ``[n, n]``, query x source) and ``proximity`` ``[n]``, the sum of its parts' raw
    proximities (0: a degenerate sum, all importances 0). ``target`` is ``"mid"`` (the attention sum of a
    sequential block) or ``"resid"`` (the stream entering the next layer)."""

    target: str
    importance: dict[str, torch.Tensor]
    proximity: torch.Tensor


def _normalised(target: str, raw: dict[str, torch.Tensor]) -> Sum:
    total = sum(p if p.dim() == 1 else p.sum(-1) for p in raw.values())
    assert isinstance(total, torch.Tensor)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    imp = {name: (p / (safe if p.dim() == 1 else safe[:, None])).cpu() for name, p in raw.items()}
    return Sum(target, imp, total.cpu())


def _attention_proximity(parts: LayerParts, total: torch.Tensor) -> torch.Tensor:
    """``[n, n]`` proximities of every ``c_ij`` to ``total[i]``, a block of query positions at a time."""
    n, d = parts.resid.shape
    out = torch.zeros(n, n, device=total.device)
    step = max(1, CHUNK_ELEMENTS // max(1, n * d))
    for start in range(0, n, step):
        q = slice(start, min(n, start + step))
        out[q] = proximity(total[q], parts.attention(q))
    return out


def layer_sums(parts: LayerParts) -> tuple[Sum, ...]:
    """The importances of one layer's sums: (attention sum, MLP sum) on a sequential block, (the one sum,) on a
    parallel one."""
    first, last = parts.totals()
    attn_total = last if parts.parallel else first
    raw = {"resid": proximity(attn_total, parts.resid), "attn": _attention_proximity(parts, attn_total)}
    if parts.bias is not None:
        raw["bias"] = proximity(attn_total, parts.bias)
    if parts.parallel:
        raw["mlp"] = proximity(last, parts.mlp)
        return (_normalised("resid", raw),)
    mlp_raw = {"resid": proximity(last, first), "mlp": proximity(last, parts.mlp)}
    return _normalised("mid", raw), _normalised("resid", mlp_raw)
