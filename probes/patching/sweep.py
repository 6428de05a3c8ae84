"""Activation-patching sweeps: one generic patcher and ready-made sweeps (TransformerLens ``patching.py`` style).

Convention (TransformerLens's default, "denoising"): the *base* run is the corrupt prompt and each
cell writes the *clean* activation at one (site, position) into it; the cell's value is
``metric(last-position logits of the patched corrupt run)``. ``direction="noise"`` swaps the roles
(corrupt activations written into the clean run). Clean and corrupt pair token ``i`` with token ``i``,
so they must have the same token length.

Datasets: ``clean`` and ``corrupt`` may be lists of prompts (pair ``i`` = ``clean[i]``, ``corrupt[i]``;
pairs may differ in length from each other). Pairs of one length run together in every batch (no
padding: positions are each prompt's own token indices, negative ones from each prompt's end), and the
result holds the per-cell mean over pairs in ``values``, every pair's map in ``per_pair`` and the paired
standard errors of the effect (``stderr``: over each pair's own patched - base) and of the normalised effect
(``stderr_normalized``); ``stderr_raw`` is the raw metric's (:mod:`.combine`). One pair gives exactly the
single-pair result.

Pairs and cells are prepared in :mod:`.pairs`; this module checks the request, runs the chosen method
per group of pairs and assembles the result. Methods (same cells, same :class:`PatchingResult`):

- ``"exact"`` (default): batched forwards that skip what a patch cannot change -- positions before
  the patched token come from the base run's KV cache, layers below the patched layer start from its
  cached ``resid_pre`` (:mod:`lmscope.interventions.partial`), and only the last position is unembedded.
  Cells are grouped in blocks of ``layer_block`` layers x ``position_block`` positions; a block starts
  at its lowest layer and first position (cells above it recompute a few unchanged values), so it
  equals the loop up to float rounding. See :mod:`.exact`.
- ``"loop"``: one full forward per cell with the core ``Patch`` intervention (the reference, :mod:`.loop`).
- ``"attribution"``: attribution patching, see :mod:`.attribution`.
- ``"atp*"``: attribution patching with AtP*'s QK fix (exact attention pattern where the patch feeds it).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Sequence, cast

import torch

from lmscope.interventions.errors import InputError
from lmscope.interventions.partial import partial_forward_unsupported
from lmscope.interventions.specs import LayerSpec, resolve_layers

from .attribution import attribution_sweep, linear_regime_note
from .combine import combine_maps, dataset_col_labels, dataset_result
from .exact import exact_values
from .loop import loop_values
from .metrics import Metric
from .pairs import Pair, Positions, Units, col_labels, kv_group_notes, plan_cells, prepare_pairs, source_values
from .result import PatchingResult
from .scoring import pair_scores

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

METHODS = ("exact", "loop", "attribution", "atp*")


def patching_sweep(model: HookedModel, clean: Any, corrupt: Any, sites: str | Sequence[str],
                   positions: Positions = None, metric: Metric | Sequence[Metric] | None = None, *,
                   heads: Units = False, neurons: Units = False,
                   method: str = "exact", direction: str = "denoise", batch_size: int = 64, layer_block: int = 6,
                   position_block: int = 2, progress: bool | None = None) -> PatchingResult:
    """Patch every (site [, head], position) cell and measure ``metric`` on the last position.

    ``clean``/``corrupt``: one prompt each, or lists of prompts (a dataset of pairs; see the module
    docstring: mean, paired standard errors and per-pair maps). ``sites``: names or wildcards (``"resid_pre.*"``,
    ``["attn_out.3", "mlp_out.3"]``) of any kind but ``logits``; one row each, or one row per head of per-head
    sites (``q``, ``k``, ``v``, ``rot_q``, ``rot_k``, ``attn_scores``, ``attn_pattern``, ``head_z``, ``head_out``)
    with ``heads=True`` (or a list of head indices), one row per neuron of ``mlp_pre``/``mlp_post`` with
    ``neurons=True`` (or a list: d_mlp is large). On ``k``/``v``/``rot_k`` a row is a KV head; on a grouped-query
    model the result's notes say which query heads each touched. An attention map's position is its query row
    (all keys of that row are patched). ``positions``: None = each token separately (pairs must then share one length),
    ``"all"`` = every token at once, or a list of token indices (negative from each prompt's end).
    ``metric(logits [rows, vocab]) -> [rows]``, or one metric per pair (a list, e.g. a logit difference between
    each pair's own answer tokens). ``batch_size`` bounds the rows of one batched forward
    (cells x pairs). See the module docstring for the convention and the methods.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}.")
    metric = _checked_metric(metric)
    groups = prepare_pairs(model, clean, corrupt, direction)
    n_pairs = sum(len(g.index) for g in groups)
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1:
        groups = [part for g in groups for part in g.split(batch_size)]  # (exact_values reports a bad batch_size)
    metrics = _metric_per_pair(metric, n_pairs)
    lengths = {g.base.shape[1] for g in groups}
    if positions is None and len(lengths) > 1:
        raise InputError(f"positions=None patches each token separately, but the pairs have {len(lengths)} "
                         f"different token lengths ({', '.join(map(str, sorted(lengths)))}); pass 'all' or a list "
                         "of token indices such as [-1] (negative ones count from each prompt's end).")
    units = {"heads": heads, "neurons": neurons}
    notes = kv_group_notes(model, [c for row in plan_cells(model, sites, "all", heads, 1, neurons)[0] for c in row])
    if method in ("attribution", "atp*"):
        results = _attribution_maps(model, groups, sites, positions, units, metrics, direction, method == "atp*",
                                    batch_size)
        result = results[0] if n_pairs == 1 else combine_maps(results, positions, lengths)
        return _noted(result, [n for n in (linear_regime_note(result),) if n is not None] + notes)
    unsupported = partial_forward_unsupported(model, max(lengths)) if method == "exact" else None
    if unsupported is not None:
        warnings.warn(f"The fast exact sweep's partial forwards are not exact with {unsupported}; computing the "
                      "same map with one full forward per patch (method='loop').", stacklevel=2)
        method = "loop"
    options = {"batch_size": batch_size, "layer_block": layer_block, "position_block": position_block,
               "progress": progress}
    return _noted(_measured_sweep(model, groups, sites, positions, units, metrics, method, direction, lengths,
                                  options), notes)


def _noted(result: PatchingResult, notes: list[str]) -> PatchingResult:
    """``result`` with ``notes`` added (once)."""
    result.notes = list(dict.fromkeys([*result.notes, *notes]))
    return result


def _checked_metric(metric: Metric | Sequence[Metric] | None) -> Metric | Sequence[Metric]:
    """``metric`` once it is a function of logits or a non-empty list of them (one per pair)."""
    if metric is None or not (callable(metric) or isinstance(metric, (list, tuple)) and metric
                              and all(callable(m) for m in metric)):
        raise InputError("patching_sweep needs a metric: a function of last-position logits [rows, vocab] "
                         "returning [rows], e.g. lmscope.probes.patching.logit_diff(model, ' Paris', ' Rome'), "
                         "or a list of such functions, one per pair.")
    return metric


def _metric_per_pair(metric: Metric | Sequence[Metric], n_pairs: int) -> list[Metric]:
    """One metric for each of the ``n_pairs`` pairs (a single function serves them all)."""
    metrics = list(metric) if isinstance(metric, (list, tuple)) else [cast(Metric, metric)] * n_pairs
    if len(metrics) != n_pairs:
        raise InputError(f"metric is a list of {len(metrics)} functions but there are {n_pairs} pairs; give one "
                         "metric per pair, or one function for all.")
    return metrics


def _attribution_maps(model: HookedModel, groups: list[Pair], sites: str | Sequence[str], positions: Positions,
                      units: dict[str, Units], metrics: list[Metric], direction: str, qk_fix: bool,
                      batch_size: int) -> list[PatchingResult]:
    """Every pair's attribution map (one pair at a time), in dataset order."""
    results = {}
    for g in groups:
        grid, row_labels, cols = plan_cells(model, sites, positions, units["heads"], g.base.shape[1],
                                            units["neurons"])
        for i in range(len(g.index)):
            results[g.index[i]] = attribution_sweep(model, g.row(i), grid, row_labels, cols, metrics[g.index[i]],
                                                    direction, qk_fix=qk_fix, batch_size=batch_size)
    return [results[i] for i in range(len(metrics))]


def _measured_sweep(model: HookedModel, groups: list[Pair], sites: str | Sequence[str], positions: Positions,
                    units: dict[str, Units], metrics: list[Metric], method: str, direction: str, lengths: set[int],
                    options: dict[str, Any]) -> PatchingResult:
    """The exact or loop map of every pair, group by group, as one result (a dataset's mean and spread)."""
    n_pairs = len(metrics)
    per_pair: list[torch.Tensor] = [torch.empty(0)] * n_pairs
    base_m, source_m = torch.empty(n_pairs), torch.empty(n_pairs)
    for g in groups:
        grid, row_labels, cols = plan_cells(model, sites, positions, units["heads"], g.base.shape[1],
                                            units["neurons"])
        cells = [c for row in grid for c in row]
        source, source_logits = source_values(model, g, sorted({c.site for c in cells}))
        mine = [metrics[i] for i in g.index]
        if method == "exact":
            flat, base_logits = exact_values(model, g, cells, source, mine, **options)
        else:
            flat, base_logits = loop_values(model, g, cells, source, mine, options["progress"])
        with torch.no_grad():
            base_m[g.index] = pair_scores(mine, base_logits[None])[0]
            source_m[g.index] = pair_scores(mine, source_logits[None])[0]
        for i, at in enumerate(g.index):
            per_pair[at] = flat[:, i].reshape(len(grid), len(cols))
    name = getattr(metrics[0], "__name__", "metric")
    if n_pairs == 1:
        return PatchingResult(per_pair[0], row_labels, col_labels(groups[0], cols), float(base_m[0]),
                              float(source_m[0]), method, direction, name)
    return dataset_result(per_pair, row_labels, dataset_col_labels(positions, cols, lengths), base_m, source_m,
                          method, direction, name)


# -- ready-made sweeps ---------------------------------------------------------------------------------
def _layer_sites(model: HookedModel, kind: str, layers: LayerSpec) -> list[str]:
    return [f"{kind}.{layer}" for layer in resolve_layers(model, layers)]


def resid_pre_sweep(model: HookedModel, clean: Any, corrupt: Any, metric: Metric, layers: LayerSpec = None,
                    positions: Positions = None, **kwargs: Any) -> PatchingResult:
    """``resid_pre`` of each layer x each position (TransformerLens ``get_act_patch_resid_pre``)."""
    return patching_sweep(model, clean, corrupt, _layer_sites(model, "resid_pre", layers), positions, metric,
                          **kwargs)


def attn_out_sweep(model: HookedModel, clean: Any, corrupt: Any, metric: Metric, layers: LayerSpec = None,
                   positions: Positions = None, **kwargs: Any) -> PatchingResult:
    """``attn_out`` of each layer x each position."""
    return patching_sweep(model, clean, corrupt, _layer_sites(model, "attn_out", layers), positions, metric,
                          **kwargs)


def mlp_out_sweep(model: HookedModel, clean: Any, corrupt: Any, metric: Metric, layers: LayerSpec = None,
                  positions: Positions = None, **kwargs: Any) -> PatchingResult:
    """``mlp_out`` of each layer x each position."""
    return patching_sweep(model, clean, corrupt, _layer_sites(model, "mlp_out", layers), positions, metric,
                          **kwargs)


def head_sweep(model: HookedModel, clean: Any, corrupt: Any, metric: Metric, layers: LayerSpec = None,
               positions: Positions = "all", kind: str = "head_z", **kwargs: Any) -> PatchingResult:
    """Each head of ``kind`` (rows ``head_z.L:hH``), every position at once by default or per position;
    ``result.by_head()`` gives the ``[layers, heads]`` tensor (``by_head(positions=True)``: ``[layers, heads,
    positions]``). ``kind`` is any per-head kind (TransformerLens's
    ``get_act_patch_attn_head_{out,q,k,v,pattern}_all_pos``: ``"head_z"``, ``"q"``, ``"k"``, ``"v"``,
    ``"attn_pattern"``; also ``"rot_q"``, ``"rot_k"``, ``"attn_scores"``, ``"head_out"``); on ``k``/``v``/``rot_k``
    the rows are KV heads."""
    return patching_sweep(model, clean, corrupt, _layer_sites(model, kind, layers), positions, metric,
                          heads=True, **kwargs)


def neuron_sweep(model: HookedModel, clean: Any, corrupt: Any, metric: Metric, layers: LayerSpec = None,
                 neurons: Units = True, positions: Positions = "all", kind: str = "mlp_post",
                 **kwargs: Any) -> PatchingResult:
    """Each MLP neuron of ``kind`` (``"mlp_post"``, the MLP's hidden layer, or ``"mlp_pre"``) in ``layers``: rows
    ``mlp_post.L:nN``, every position at once by default. ``neurons`` is every neuron (True) or a list of indices:
    d_mlp is large (1536 on SmolLM2-135M), so a subset (e.g. the top neurons of ``method="attribution"``, which
    costs one backward pass for all of them) keeps an exact sweep short."""
    return patching_sweep(model, clean, corrupt, _layer_sites(model, kind, layers), positions, metric,
                          neurons=neurons, **kwargs)
