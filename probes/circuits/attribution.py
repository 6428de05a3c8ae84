"""Edge attribution: EAP, EAP-IG and exact edge patching, over a dataset of clean/corrupt pairs.

- ``"eap"`` (Syed et al. 2023): ``score(u -> t) = (source_u - clean_u) . dmetric/d(input_t)``, the gradient taken
  in the clean run, summed over positions. One forward and one backward per pair, whatever the number of edges:
  every target's input is its own autograd leaf (the edge-level forward with every edge kept).
- ``"eap-ig"`` (Hanna et al. 2024): the same with the gradient averaged over ``ig_steps`` points ``k / steps``
  (``k = 1..steps``) on the straight line from the corrupt to the clean input embeddings.
- ``"exact"``: each edge patched alone through the edge-level forward, ``metric(patched) - metric(clean)``; many
  edges per forward (one mask each), every forward starting at the edge's target layer from the clean run's
  residual (the layers below are the clean run's, exactly).

Scores share one sign convention: the (estimated) change of the metric when the edge carries the source value.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Sequence

import torch
from tqdm.auto import tqdm

from lmscope.interventions.base import Intervention
from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.inputs import Batch
from lmscope.interventions.partial import partial_forward_unsupported, partial_model
from lmscope.interventions.positions import ForwardContext
from lmscope.interventions.progress import bar_disable
from lmscope.interventions.sites import Site

from .graph import EdgeGraph
from .nodes import node_sites, outputs_from_cache
from .pairs import Metric, Pairs, apply_metric, forward_kwargs, prepare_pairs, run_pairs
from .patch import EdgePatch
from .scores import EdgeScores

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

METHODS = ("eap", "eap-ig", "exact")


class _Interpolate(Intervention):
    """Internal: row ``r``'s embedding becomes ``start[r] + alpha[r] * (value - start[r])``."""

    internal = True

    def __init__(self, start: torch.Tensor, alpha: torch.Tensor) -> None:
        super().__init__("embed")
        self.start_values, self.alpha = start, alpha

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        start = self.start_values.to(value.device, value.dtype)
        return start + self.alpha.to(value.device, value.dtype)[:, None, None] * (value - start)


def clean_corrupt_runs(model: HookedModel, pairs: Pairs, graph: EdgeGraph, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The clean and corrupt runs: node outputs, last logits, metrics, and the clean run's ``extra`` sites."""
    out: dict[str, Any] = {}
    for name, batch in (("clean", pairs.clean), ("corrupt", pairs.corrupt)):
        cache = Cache([*node_sites(model), "embed", *(extra if name == "clean" else ())])
        logits = run_pairs(model, batch, [cache])
        real = batch.attention_mask.to(logits.device).float()[:, None, :, None]
        out[name] = outputs_from_cache(model, graph, cache) * real  # padding carries nothing
        out[f"{name}_metric"] = apply_metric(pairs.metrics, logits)[0].detach().cpu()
        out[f"{name}_cache"] = cache
    return out


def resolve_source(model: HookedModel, runs: dict[str, Any], source: Any, pairs: Pairs) -> torch.Tensor:
    if isinstance(source, torch.Tensor):
        return source
    if source == "corrupt":
        return runs["corrupt"]
    if source == "mean":
        real = pairs.corrupt.attention_mask.to(runs["corrupt"].device).bool()
        weights = real.float() / real.sum()
        return torch.einsum("bupd,bp->ud", runs["corrupt"], weights)
    raise InputError(f"source must be 'corrupt', 'mean' or a tensor of node values, got {source!r}.")


def _gradients(model: HookedModel, pairs: Pairs, graph: EdgeGraph, runs: dict[str, Any], steps: int,
               batch_size: int, show: bool) -> dict[int, torch.Tensor]:
    """``target group start -> [pairs, n_t, pos, d]``: d metric / d(each target's input), averaged over the
    ``steps`` interpolation points (``steps == 1``: the clean run itself)."""
    n = pairs.n
    rows = [(k, p) for k in range(1, steps + 1) for p in range(n)]
    corrupt_embed = runs["corrupt_cache"]["embed"]
    grads: dict[int, torch.Tensor] = {}
    keep_all = torch.ones(graph.n_targets, graph.n_nodes, dtype=torch.bool)
    zeros = torch.zeros(graph.n_nodes, model.d_model)
    for i in tqdm(range(0, len(rows), batch_size), desc="edge gradients", disable=bar_disable(show), leave=False):
        chunk = rows[i:i + batch_size]
        idx = torch.tensor([p for _, p in chunk])
        batch = Batch(pairs.clean.input_ids[idx], pairs.clean.attention_mask[idx], pairs.clean.position_ids[idx])
        patch = EdgePatch(keep_all, zeros)
        patch.grad_inputs = True
        ivs: list[Intervention] = [patch]
        if steps > 1:
            alpha = torch.tensor([k / steps for k, _ in chunk])
            ivs.insert(0, _Interpolate(corrupt_embed[idx.to(corrupt_embed.device)], alpha))
        with torch.enable_grad():
            logits = run_pairs(model, batch, ivs, grad=True)
            values = torch.stack([pairs.metrics[p](logits[j:j + 1])[0] for j, (_, p) in enumerate(chunk)])
            leaves = dict(patch.leaves)
            found = torch.autograd.grad(values.sum(), list(leaves.values()), allow_unused=True)
        for start, g in zip(leaves, found):
            g = (torch.zeros_like(leaves[start]) if g is None else g).transpose(1, 2)  # [rows, n_t, pos, d]
            total = grads.setdefault(start, torch.zeros(n, *g.shape[1:], device=g.device))
            total.index_add_(0, idx.to(g.device), g.float())
    return {start: g / steps for start, g in grads.items()}


def _gradient_scores(graph: EdgeGraph, delta: torch.Tensor, grads: dict[int, torch.Tensor],
                     chunk: int = 8) -> torch.Tensor:
    """``[pairs, n_targets, n_nodes]``: ``-(clean_u - source_u) . grad_t`` summed over positions (NaN off edges).

    One matrix product per chunk of pairs over every (target, node) couple (the entries past a target's upstream
    prefix are computed and dropped): a few large products run far faster than one small one per target group."""
    n = delta.shape[0]
    out = torch.empty(n, graph.n_targets, graph.n_nodes)
    for i in range(0, n, chunk):
        d = delta[i:i + chunk].flatten(2)  # [b, U, pos * d]
        g = torch.zeros(d.shape[0], graph.n_targets, d.shape[-1], device=d.device)
        for start, grad in grads.items():
            g[:, start:start + grad.shape[1]] = grad[i:i + chunk].flatten(2).to(d.device)
        out[i:i + chunk] = -torch.bmm(g, d.transpose(1, 2)).cpu()
    return out.masked_fill(~graph.valid[None], float("nan"))


def _exact_scores(model: HookedModel, pairs: Pairs, graph: EdgeGraph, runs: dict[str, Any], source: torch.Tensor,
                  edges: torch.Tensor, batch_size: int, show: bool) -> torch.Tensor:
    """``[pairs, n_targets, n_nodes]`` measured one edge at a time (NaN where not asked for)."""
    n, width = pairs.n, int(pairs.clean.input_ids.shape[1])
    partial = partial_forward_unsupported(model, width) is None
    groups: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for t, u in edges.tolist():
        groups[min(graph.target_layer(t), graph.n_layers - 1) if partial else 0].append((t, u))
    per = max(1, batch_size // n)
    chunks = [(layer, todo[i:i + per]) for layer, todo in sorted(groups.items()) for i in range(0, len(todo), per)]
    out = torch.full((n, graph.n_targets, graph.n_nodes), float("nan"))
    clean_cache, clean_metric = runs["clean_cache"], runs["clean_metric"]
    for layer, chunk in tqdm(chunks, desc="edge patching", disable=bar_disable(show), leave=False):
        masks = torch.ones(len(chunk), graph.n_targets, graph.n_nodes, dtype=torch.bool)
        for j, (t, u) in enumerate(chunk):
            masks[j, t, u] = False
        patch = EdgePatch(masks, source)
        patch.base = runs["clean"]
        rows = pairs.rows(pairs.clean, len(chunk))
        hidden = clean_cache[f"resid_pre.{layer}"].repeat(len(chunk), 1, 1) if layer else None
        with model.apply([patch]), partial_model(model, layer, hidden) as forward, torch.no_grad():
            logits = forward(**forward_kwargs(model, rows)).logits[:, -1].float()
        effect = apply_metric(pairs.metrics, logits).cpu() - clean_metric[None]
        for j, (t, u) in enumerate(chunk):
            out[:, t, u] = effect[j]
    return out


def _edge_list(graph: EdgeGraph, edges: Any) -> torch.Tensor:
    """``[k, 2]`` (target, node) of the edges to patch exactly (default: every edge)."""
    if edges is None:
        return graph.edge_index
    if isinstance(edges, torch.Tensor) and edges.dim() == 2 and edges.shape[1] == 2:
        pairs = edges.long()
    else:
        pairs = torch.tensor([graph.parse_edge(e) if isinstance(e, str) else tuple(e) for e in edges],
                             dtype=torch.long).view(-1, 2)
    t, u = pairs.unbind(1)
    bad = (t < 0) | (t >= graph.n_targets) | (u < 0) | (u >= graph.upstream[t.clamp(0, graph.n_targets - 1)])
    if bool(bad.any()):
        raise InputError(f"{int(bad.sum())} of the edges are not in this graph (e.g. (target, node) = "
                         f"{tuple(pairs[bad][0].tolist())}); name edges like 'A3.1->M5' (EdgeGraph.edge_names).")
    return pairs


def edge_attribution(model: HookedModel, clean: Any, corrupt: Any, metric: Metric | Sequence[Metric], *,
                     method: str = "eap-ig", ig_steps: int = 5, edges: Any = None, source: Any = "corrupt",
                     batch_size: int = 16, progress: bool | None = None) -> EdgeScores:
    """Score every edge of ``model``'s :class:`EdgeGraph` for the clean/corrupt pairs (see the module docstring).

    ``metric`` is a function of last-position logits (or one per pair); ``edges`` (exact only) limits the
    patched edges (names like ``"A3.1->M5"``, ``(target, node)`` pairs, or a ``[k, 2]`` tensor); ``source``:
    ``"corrupt"`` (each pair's corrupt run), ``"mean"`` (each node's mean over the corrupt prompts' tokens) or
    node values (``[pairs, nodes, pos, d]`` / ``[nodes, d]``); ``batch_size`` bounds the rows of one forward.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
    if isinstance(ig_steps, bool) or not isinstance(ig_steps, int) or ig_steps < 1:
        raise InputError(f"ig_steps must be a positive int, got {ig_steps!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}.")
    graph = EdgeGraph.from_model(model)
    pairs = prepare_pairs(model, clean, corrupt, metric)
    starts = [f"resid_pre.{layer}" for layer in range(1, graph.n_layers)] if method == "exact" else []
    runs = clean_corrupt_runs(model, pairs, graph, starts)  # exact edge patching starts at each edge's layer
    src = resolve_source(model, runs, source, pairs)
    show = bool(progress) if progress is not None else pairs.n * graph.n_layers > 200
    if method == "exact":
        per_pair = _exact_scores(model, pairs, graph, runs, src, _edge_list(graph, edges), batch_size, show)
    else:
        if edges is not None:
            raise InputError("edges= selects the edges of method='exact'; EAP and EAP-IG score every edge at once.")
        steps = ig_steps if method == "eap-ig" else 1
        grads = _gradients(model, pairs, graph, runs, steps, batch_size, show)
        full_src = src if src.dim() == 4 else src[None, :, None, :].expand_as(runs["clean"])
        per_pair = _gradient_scores(graph, runs["clean"] - full_src, grads)
    per_pair = torch.where(graph.valid[None], per_pair, torch.full_like(per_pair, float("nan")))
    return EdgeScores(graph, per_pair, method, runs["clean_metric"], runs["corrupt_metric"],
                      {"ig_steps": ig_steps if method == "eap-ig" else None,
                       "source": source if isinstance(source, str) else "custom"})
