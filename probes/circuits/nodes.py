"""Node outputs: what each node of the :class:`EdgeGraph` writes into the residual stream, in one forward.

``node_outputs(model, prompts)`` returns ``[batch, n_nodes, pos, d_model]`` (float32, the model's padded layout):
the embedding (``resid_pre.0``: token embedding plus any learned position embedding), each head's output
through its slice of the output projection (``head_out``), each MLP's contribution (``mlp_out``).

Post-attention norms (Gemma 2/3 and OLMo-2 "sandwich" norms) sit between the summed heads and the stream, so
a head's contribution there is defined through that norm's action on the full sum in the same forward: the
post-norm multiplies each channel of each token by a factor (RMSNorm: weight / rms of the sum), and a head's
contribution is its ``head_out`` times that factor (:func:`head_contributions`). The heads' contributions then
add up to ``attn_out`` exactly, in every forward; an edge from a head carries that contribution.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError

from .graph import EdgeGraph

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


def head_contributions(model: HookedModel, layer: int, head_out: torch.Tensor,
                       attn_out: torch.Tensor | None) -> torch.Tensor:
    """``[b, pos, heads, d]``: each head's contribution to the stream (``head_out`` itself without a post-attention
    norm; scaled by the post-norm's per-channel factor ``attn_out / (sum of heads + bias)`` with one)."""
    if model.arch.attn_post_norm is None:
        return head_out
    if attn_out is None:
        raise InputError("attn_out is needed for head contributions on a model with post-attention norms.")
    _, bias = model.output_projection(layer)
    total = head_out.sum(2) + (bias.to(head_out.dtype) if bias is not None else 0)
    factor = torch.where(total != 0, attn_out / torch.where(total != 0, total, torch.ones_like(total)),
                         torch.zeros_like(total))
    return head_out * factor[:, :, None]


def node_sites(model: HookedModel) -> list[str]:
    """The sites :func:`node_outputs` reads."""
    sites = ["resid_pre.0", "head_out.*", "mlp_out.*"]
    return sites + (["attn_out.*"] if model.arch.attn_post_norm is not None else [])


def outputs_from_cache(model: HookedModel, graph: EdgeGraph, cache: Any) -> torch.Tensor:
    """``[batch, n_nodes, pos, d]`` float32 from a cache holding :func:`node_sites`."""
    first = cache["resid_pre.0"]
    b, p, d = first.shape
    out = torch.empty(b, graph.n_nodes, p, d, dtype=torch.float32, device=first.device)
    out[:, 0] = first.float()
    for layer in range(graph.n_layers):
        attn = cache[f"attn_out.{layer}"] if model.arch.attn_post_norm is not None else None
        heads = head_contributions(model, layer, cache[f"head_out.{layer}"], attn)
        s = graph.layer_start(layer)
        out[:, s:s + graph.n_heads] = heads.float().permute(0, 2, 1, 3)
        out[:, graph.mlp_node(layer)] = cache[f"mlp_out.{layer}"].float()
    return out


def node_outputs(model: HookedModel, prompts: Any, *, graph: EdgeGraph | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over ``prompts``: ``(node outputs [batch, n_nodes, pos, d] float32, last-token logits
    [batch, vocab])``, in the model's (left-)padded layout."""
    graph = graph or EdgeGraph.from_model(model)
    cache = Cache(node_sites(model))
    result = model.run(prompts, [cache])
    return outputs_from_cache(model, graph, cache), result.logits[:, -1]


def node_means(model: HookedModel, prompts: Any, *, graph: EdgeGraph | None = None) -> torch.Tensor:
    """``[n_nodes, d]``: each node's output averaged over every real token of ``prompts`` (a mean-ablation source
    for :class:`~lmscope.probes.circuits.EdgePatch`)."""
    graph = graph or EdgeGraph.from_model(model)
    cache = Cache(node_sites(model))
    result = model.run(prompts, [cache])
    outputs = outputs_from_cache(model, graph, cache)
    real = result.batch.attention_mask.to(outputs.device).bool()  # [batch, pos]
    weights = real.float() / real.sum()
    return torch.einsum("bupd,bp->ud", outputs, weights)
