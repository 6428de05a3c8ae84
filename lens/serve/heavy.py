"""The heavy workbench views, run as jobs: exact patching maps, the edge-level circuit graph, flow routes.

A request is checked when it arrives (tokens, pair lengths, target tokens: 400 with the reason) and its job
computed later on the job threads under the request's interventions:

- patching: :func:`lmscope.probes.patching.resid_pre_sweep` (each position) and
  :func:`~lmscope.probes.patching.head_sweep` (each head, every position at once), exact method, the clean
  activation patched into the corrupt run. They run in parts of ``LAYER_BLOCK`` layers (the exact engine's own
  layer blocks, so every batch, and every number, is the one a single call computes) and each part reports
  progress; the parts' rows are joined back into one map per sweep;
- graph: :func:`lmscope.probes.circuits.edge_attribution` (EAP-IG by default), its ``edges`` top edges drawn as
  ``lmscope.probes.circuits.layout.drawn_edges`` draws a circuit (nodes by layer, k/v targets to their heads),
  and the pruned circuit of those edges (``scores.circuit(k=..., prune=True).to_dict()``);
- flow: :func:`lmscope.probes.circuits.flow_routes` ``.to_dict()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from lmscope.interventions.errors import InputError

from .active import build_active
from .schema_views import FlowRequest, GraphRequest, PairRequest, PatchingRequest, nulls
from .views import one_prompt, token_names

if TYPE_CHECKING:
    from lmscope.probes.patching import PatchingResult

    from .jobs import JobContext
    from .state import ServerState

#: layers per part of a patching job: the exact engine's default ``layer_block``, so parts batch as one call does
LAYER_BLOCK = 6
Work = Callable[["JobContext"], dict[str, Any]]


def checked_pair(state: ServerState, req: PairRequest) -> tuple[list[int], list[int], Any]:
    """The pair's token ids and its metric, or an InputError saying what is wrong (before any job starts)."""
    from lmscope.probes.patching import default_metric

    limit = state.limits.max_pair_tokens
    clean, corrupt = one_prompt(state, req.prompt, limit), one_prompt(state, req.corrupt, limit)
    if len(clean) != len(corrupt):
        raise InputError(f"The clean prompt has {len(clean)} tokens and the corrupt one {len(corrupt)}; patching and "
                         "edge attribution compare them position by position, so they need the same length.")
    return clean, corrupt, default_metric(state.model, req.target, req.distractor)


def map_dict(r: PatchingResult) -> dict[str, Any]:
    return {"rows": r.row_labels, "cols": r.col_labels, "values": r.values.tolist(),
            "normalized": nulls(r.normalized().tolist()), "base_metric": r.base_metric,
            "source_metric": r.source_metric, "method": r.method, "direction": r.direction, "metric": r.metric_name,
            "notes": r.notes}


def joined(parts: list[PatchingResult]) -> PatchingResult:
    """One map from parts over consecutive layers (same columns and baselines)."""
    from lmscope.probes.patching import PatchingResult

    first = parts[0]
    return PatchingResult(torch.cat([p.values for p in parts]), [r for p in parts for r in p.row_labels],
                          first.col_labels, first.base_metric, first.source_metric, first.method, first.direction,
                          first.metric_name, notes=[n for p in parts for n in p.notes])


def patching_work(state: ServerState, req: PatchingRequest) -> Work:
    from lmscope.probes.patching import head_sweep, resid_pre_sweep

    clean, corrupt, metric = checked_pair(state, req)
    model = state.model
    blocks = [list(range(s, min(s + LAYER_BLOCK, model.n_layers))) for s in range(0, model.n_layers, LAYER_BLOCK)]
    plan = [("resid_pre", resid_pre_sweep, b) for b in blocks] + [("heads", head_sweep, b) for b in blocks]

    def work(ctx: JobContext) -> dict[str, Any]:
        done: dict[str, list[PatchingResult]] = {"resid_pre": [], "heads": []}
        active = build_active(state, req.interventions, clean)
        with model.apply(active.interventions):
            for i, (name, sweep, layers) in enumerate(plan):
                ctx.step(i, len(plan), f"{name} layers {layers[0]}..{layers[-1]}")
                done[name].append(sweep(model, clean, corrupt, metric, layers=layers, progress=False))
        resid, heads = joined(done["resid_pre"]), joined(done["heads"])
        return {"tokens": token_names(model, clean), "corrupt_tokens": token_names(model, corrupt),
                "resid_pre": map_dict(resid), "heads": {**map_dict(heads), "by_head": heads.by_head().tolist(),
                                                        "by_head_normalized": nulls(heads.by_head("normalized")
                                                                                    .tolist())},
                "active": active.labels}
    return work


def graph_work(state: ServerState, req: GraphRequest) -> Work:
    from lmscope.probes.circuits import EdgeGraph, edge_attribution
    from lmscope.probes.circuits.layout import circuit_nodes, drawn_edges, node_info

    clean, corrupt, metric = checked_pair(state, req)
    model = state.model
    graph = EdgeGraph.from_model(model)  # a model without the q/k/v sites is refused here (400)

    def work(ctx: JobContext) -> dict[str, Any]:
        ctx.step(0, 2, f"edge attribution ({req.method})")
        active = build_active(state, req.interventions, clean)
        with model.apply(active.interventions):
            scores = edge_attribution(model, [clean], [corrupt], metric, method=req.method, ig_steps=req.ig_steps,
                                      progress=False)
        ctx.step(1, 2, "top edges")
        k = min(req.edges, int(scores.scored().sum()))
        top = scores.circuit(k=k, prune=False)
        edges = drawn_edges(graph, top.in_circuit, top.scores)
        nodes = circuit_nodes(graph, edges)
        return {"tokens": token_names(model, clean), "method": scores.method, "n_layers": graph.n_layers,
                "n_heads": graph.n_heads, "clean_metric": float(scores.clean_metric[0]),
                "corrupt_metric": float(scores.corrupt_metric[0]),
                "nodes": [{"name": n, **node_info(graph, n)} for n in nodes],
                "edges": [{"name": e.name, "source": e.source, "dest": e.dest, "input": e.input,
                           "score": nulls(e.score)} for e in edges],
                "circuit": scores.circuit(k=k, prune=True).to_dict(), "active": active.labels}
    return work


def flow_work(state: ServerState, req: FlowRequest) -> Work:
    from lmscope.probes.circuits import flow_routes

    ids = one_prompt(state, req.prompt)
    if req.interventions is not None and req.interventions.ablate:
        raise InputError("Flow routes split each layer's attention output by its pattern and values and check the "
                         "split against head_z; an ablated head's output no longer comes from them. Clear the "
                         "ablation for this view (steering is fine).")
    if not -len(ids) <= req.position < len(ids):
        raise InputError(f"position must be in {-len(ids)}..{len(ids) - 1} (the prompt has {len(ids)} tokens).")

    def work(ctx: JobContext) -> dict[str, Any]:
        ctx.step(0, 1, "flow routes")
        active = build_active(state, req.interventions, ids)
        with state.model.apply(active.interventions):
            routes = flow_routes(state.model, ids, threshold=req.threshold, position=req.position)
        return {**routes.to_dict(), "active": active.labels}
    return work


#: kind -> (request body, the function that checks a request and returns its job's work)
HEAVY: dict[str, tuple[type, Callable[[Any, Any], Work]]] = {
    "patching": (PatchingRequest, patching_work), "graph": (GraphRequest, graph_work), "flow": (FlowRequest, flow_work)}
