"""Per-target inputs through a block's own norm and projection: the arithmetic of an edge-level forward.

A target of the edge graph reads its own copy of the stream. For a head's q, k or v input that copy goes through
the layer's attention norm and then only that head's slice of the projection (:func:`project_heads`); for an
MLP or the logits, through the MLP's or the final norm (:func:`normalise`). Norms and projections are the
model's own modules, called without their hooks (``module.forward``), so a ``Cache`` on ``q.L`` records what the
forward really used, once.

Plain ``nn.Linear`` and GPT-2's ``Conv1D`` projections are sliced per head (the head's rows of a fused q/k/v
weight come from the same layout table the ``q``/``k``/``v`` sites use); any other module runs whole on each
target's input and the head's slice of its output is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lmscope.interventions.locations import head_shape
from lmscope.interventions.projections import qkv_region, read_qkv

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


def normalise(norm: nn.Module | None, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` (any leading dims, ``d_model`` last) through ``norm`` (none: as is), in the model's dtype."""
    x = x.to(dtype)
    return x if norm is None else norm.forward(x)


def _weight_in_out(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(weight [in, out], bias [out])`` of a plain linear projection, None for anything else."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if not isinstance(weight, torch.Tensor) or not (bias is None or isinstance(bias, torch.Tensor)):
        return None
    if type(module) is nn.Linear:
        return weight.t(), bias
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2: x @ weight + bias
        return weight, bias
    return None


def project_heads(model: HookedModel, layer: int, kind: str, x: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """``kind``'s value for each target: ``x [b, pos, n_t, d]`` holds each target's normalised input and
    ``heads [n_t]`` the (query or key/value) head it feeds; returns ``[b, pos, n_t, d_head]``."""
    path, layout = model.arch.qkv_path(model.hf_model.config, layer, kind)
    module = model.module(path)
    shape = head_shape(model)
    weights = _weight_in_out(module)
    if weights is not None:
        weight, bias = weights
        w = qkv_region(weight, kind, layout, shape)[:, heads.to(weight.device)]  # [d, n_t, d_head]
        out = torch.einsum("bptd,dte->bpte", x.to(w.dtype), w)
        if bias is not None:
            out = out + qkv_region(bias, kind, layout, shape)[heads.to(bias.device)]
        return out
    raw = read_qkv(module.forward(x), kind, layout, shape)  # [b, pos, n_t, heads, d_head]
    index = heads.to(raw.device)[None, None, :, None, None].expand(*raw.shape[:3], 1, raw.shape[-1])
    return raw.gather(3, index).squeeze(3)
