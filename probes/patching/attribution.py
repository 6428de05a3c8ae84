"""Attribution patching (AtP, Nanda 2023; Kramár et al. 2024): the sweep's first-order approximation.

One forward of the source run, one forward + one backward of the base run. For a cell that
writes source values ``a'`` over base values ``a`` at some site:

    metric(patched) ≈ metric(base) + (a' - a) · ∂metric/∂a   (summed over the cell's positions/head)

Known failure modes, handled as far as a linear estimate can:

- **Large patches.** The estimate is only good while ``a' - a`` is small. Each cell's
  ``relative_delta`` (in ``result.extras``) is ``‖Δ‖ / ‖residual stream‖`` at that layer and position
  (``head_z`` deltas mapped to the stream through ``W_O`` first, ``mlp_post`` neurons through the MLP's output
  matrix, ``head_out`` heads summed); kinds with no linear image in the stream (``ln1``, ``ln2``,
  ``final_norm``, ``q``, ``k``, ``v``, ``rot_q``, ``rot_k``, the attention maps, ``mlp_pre``) are measured
  against the site's own value at those positions instead. ``relative_change`` is ``‖Δ‖ / ‖a‖``: the change
  against the cell's own activation (a head's own output, a neuron's own activation), mapped the same way.
  A single head moves the stream little (``relative_delta`` of SmolLM2's heads on an IOI pair: at most 0.02), yet
  heads whose own output changes by more than half its size are where AtP misses (on that pair the 22 of 270
  heads with ``relative_change > 0.5`` had a mean error of 0.021 of the gap against the exact sweep, the others
  0.0004, at most 0.010; the two worst, 0.26 estimated as 0.07 and 0.18 as 0.05, were among them). A neuron's own
  change says little (SmolLM2's top neurons change by about their own size and AtP is within 0.02 logits of exact), so
  the notes flag a cell when ``relative_delta > LARGE_DELTA`` or, for a head row, ``relative_change >
  LARGE_CHANGE`` (:func:`linear_regime_note`), naming the worst cells. Verify those with the exact sweep.
- **Attention saturation.** A patch that moves a downstream attention logit across a saturated
  softmax gets a near-zero gradient (false negatives). ``qk_fix=True`` (``method="atp*"`` in
  :func:`~lmscope.probes.patching.patching_sweep`) applies AtP*'s QK fix at the attention layer the
  patched activation feeds directly (``resid_pre.L``/``embed``, ``ln1``, ``q``, ``k``, ``rot_q``, ``rot_k`` and
  the attention maps of layer ``L``: layer ``L``/0; the kinds of :data:`FEEDS_NEXT` of layer ``L``: layer
  ``L + 1``; ``final_norm``: none): that layer's attention
  pattern under the patch is computed exactly (a forward truncated after it, batched over cells), and
  only the rest is linearised::

      est = metric(base) + Δ · g_without_A + Σ (A_patched - A_base) · ∂metric/∂A

  where ``g_without_A`` is ``∂metric/∂a`` minus the part that flows through that layer's pattern (its
  queries and keys). The estimate is exact whenever the metric is linear in that pattern and in the
  other paths; query/key paths into later layers stay linear (noted in ``result.notes``). GradDrop is not
  implemented.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.base import Intervention
from lmscope.interventions.cache import Cache
from lmscope.interventions.positions import ForwardContext
from lmscope.interventions.sites import ATTENTION_MAP_SITES, Site, parse_cell_label

from .exact import RowWrite
from .metrics import Metric
from .pairs import Cell, Pair, cell_value, col_labels, source_values
from .result import PatchingResult
from .scoring import scalar_score

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

#: ``relative_delta`` above this marks a cell where the linear estimate is doubtful.
LARGE_DELTA = 0.5
#: ``relative_change`` of a head row above this marks a cell where the linear estimate is doubtful.
LARGE_CHANGE = 0.5
#: How many flagged cells a note names (largest first).
NOTE_CELLS = 8
QK_NOTE = ("Attribution patching linearises every downstream attention softmax; saturated attention can hide "
           "real effects (false negatives). method='atp*' recomputes the pattern of the attention layer each "
           "patch feeds directly (the AtP* QK fix); confirm important cells with method='exact'.")
QK_FIX_NOTE = ("AtP* QK fix: the attention pattern of the layer each patch feeds directly is exact; query/key "
               "paths into later layers are linearised, and GradDrop is not applied.")
#: Site kinds whose patch first reaches an attention pattern in the *next* layer (else: this layer's own).
FEEDS_NEXT = ("v", "head_z", "head_out", "attn_out", "resid_mid", "ln2", "mlp_pre", "mlp_post", "mlp_out",
              "resid_post")
#: Site kinds after the last attention (their patch reaches no attention pattern).
_FEEDS_NONE = ("final_norm",)
#: Site kinds whose Δ is a residual-stream vector as it is (``relative_delta`` divides by the stream's norm).
_IN_STREAM = ("embed", "resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")


class _Stop(Exception):
    """Raised by :class:`_PatternGrab` to end a forward once the pattern it needs is recorded."""


class _PatternGrab(Intervention):
    """Records ``attn_pattern.L`` and stops the forward (nothing after it is needed)."""

    def __init__(self, layer: int) -> None:
        super().__init__(f"attn_pattern.{layer}")
        self.value: torch.Tensor | None = None

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        self.value = value.detach()
        raise _Stop


class _PatternProbe(Intervention):
    """Adds zero leaves to attention patterns and keeps the patterns (in the graph) for a VJP."""

    def __init__(self, leaves: dict[Site, torch.Tensor]) -> None:
        super().__init__([s.name for s in leaves])
        self.leaves = leaves
        self.values: dict[int, torch.Tensor] = {}

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        assert site.layer is not None
        self.values[site.layer] = value
        return value + self.leaves[site].to(value.dtype)


def feeds_layer(c: Cell) -> int:
    """The attention layer whose pattern cell ``c``'s patch reaches first (a huge number for none)."""
    if c.site.kind in _FEEDS_NONE:
        return 1 << 30
    if c.site.kind in FEEDS_NEXT:
        return c.start_layer + 1
    return c.start_layer


class GradProbe(Intervention):
    """Adds a zero leaf tensor to each site, so ``∂metric/∂site`` is the gradient of that leaf."""

    def __init__(self, deltas: dict[Site, torch.Tensor]) -> None:
        super().__init__([s.name for s in deltas])
        self.deltas = deltas

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        return value + self.deltas[site].to(value.dtype)


def attribution_sweep(model: HookedModel, pair: Pair, grid: list[list[Cell]], row_labels: list[str],
                      cols: list[int | None], metric: Metric, direction: str, *, qk_fix: bool = False,
                      batch_size: int = 32) -> PatchingResult:
    """The AtP estimate of every cell of ``grid`` (see :func:`lmscope.probes.patching.patching_sweep`);
    ``qk_fix=True``: AtP* (exact pattern of the attention layer each patch feeds, see the module docstring)."""
    sites = sorted({c.site for row in grid for c in row})
    source_rows, source_logits = source_values(model, pair, sites)
    source = {s: v[0] for s, v in source_rows.items()}  # attribution runs one pair at a time
    cells = [c for row in grid for c in row]
    qk_layers = sorted({feeds_layer(c) for c in cells if feeds_layer(c) < model.n_layers}) if qk_fix else []
    base_vals, grads, base_logits, stream, pat = _base_gradients(model, pair, sites, metric, qk_layers)
    fix = _pattern_terms(model, pair, cells, source, pat, batch_size) if qk_layers else {}
    est, rel, own = (torch.empty(len(grid), len(cols)) for _ in range(3))
    base_metric = scalar_score(metric, base_logits)
    with torch.no_grad():
        for r, row in enumerate(grid):
            for k, c in enumerate(row):
                a = cell_value(c, base_vals[c.site])
                delta = cell_value(c, source[c.site]) - a
                layer = feeds_layer(c)
                grad = cell_value(c, grads[c.site] if layer not in pat else pat[layer].grad_without[c.site])
                est[r, k] = base_metric + float((delta.float() * grad.float()).sum()) + fix.get(c, 0.0)
                stream_site = _stream_site(c)
                scale = cell_value(Cell(c.site, None, c.position), base_vals[c.site]) if stream_site is None else \
                    cell_value(Cell(stream_site, None, c.position), stream[stream_site])
                moved = float(_to_stream(model, c, delta).norm())  # taken into the stream once for both ratios
                rel[r, k] = _relative(c, moved, scale)
                own[r, k] = _relative(c, moved, _to_stream(model, c, a))
    return PatchingResult(est, row_labels, col_labels(pair, cols), base_metric, scalar_score(metric, source_logits),
                          "atp*" if qk_fix else "attribution", direction, getattr(metric, "__name__", "metric"),
                          {"relative_delta": rel, "relative_change": own}, [QK_FIX_NOTE if qk_fix else QK_NOTE])


def linear_regime_note(result: PatchingResult) -> str | None:
    """The note naming the cells of an attribution map outside the linear regime (None when there are none): those
    whose patch moves the residual stream by more than :data:`LARGE_DELTA` of its norm, and head rows whose own
    output changes by more than :data:`LARGE_CHANGE` of its size (the module docstring says why heads)."""
    rel, own = result.extras.get("relative_delta"), result.extras.get("relative_change")
    if rel is None:
        return None
    heads = torch.tensor([parse_cell_label(label)[1] is not None for label in result.row_labels])
    heads = heads[:, None].expand_as(rel)
    change = torch.zeros_like(rel) if own is None else torch.where(heads, own, torch.zeros_like(own))
    score = torch.maximum(rel / LARGE_DELTA, change / LARGE_CHANGE)  # > 1: outside the linear regime
    flagged = (score > 1).nonzero().tolist()
    if not flagged:
        return None
    flagged.sort(key=lambda rc: -float(score[rc[0], rc[1]]))
    named = ", ".join(f"{result.row_labels[r]} @ {result.col_labels[c]!r} (Δ/stream {float(rel[r, c]):.2f}"
                      + (f", Δ/own {float(change[r, c]):.2f})" if bool(heads[r, c]) else ")")
                      for r, c in flagged[:NOTE_CELLS])
    more = f" and {len(flagged) - NOTE_CELLS} more" if len(flagged) > NOTE_CELLS else ""
    return (f"{len(flagged)} of {rel.numel()} cells are outside the linear regime, where first-order estimates are "
            f"least reliable: the patch moves the residual stream by more than {LARGE_DELTA:g} "
            f"of its norm (extras['relative_delta']) or a head's own output by more than {LARGE_CHANGE:g} of its size "
            f"(extras['relative_change']). Worst first: {named}{more}. Check them with method='exact' (a sweep of "
            "those rows alone, e.g. heads=[...] or neurons=[...], costs a few forwards).")


def _stream_site(c: Cell) -> Site | None:
    """The residual stream a cell's Δ is compared with (None: kinds compared with their own value)."""
    if c.site.kind == "resid_post":
        return c.site
    if c.site.kind in _IN_STREAM or c.site.kind in ("head_z", "head_out", "mlp_post"):
        return Site("resid_pre", c.start_layer)
    return None


class _Pattern:
    """One attention layer's base pattern ``[heads, q, k]``, ∂metric/∂pattern, and per-site gradients without it."""

    def __init__(self, base: torch.Tensor, grad: torch.Tensor, grad_without: dict[Site, torch.Tensor]) -> None:
        self.base, self.grad, self.grad_without = base, grad, grad_without


def _base_gradients(model: HookedModel, pair: Pair, sites: list[Site], metric: Metric, qk_layers: Sequence[int] = (),
                    ) -> tuple[dict[Site, torch.Tensor], dict[Site, torch.Tensor], torch.Tensor, dict[Site, Any],
                               dict[int, _Pattern]]:
    """Base-run values, ∂metric/∂site (``[T, ...]`` each), last logits, the residual stream per layer, and
    for each of ``qk_layers`` its pattern, ∂metric/∂pattern and the site gradients minus the pattern's part."""
    n = pair.base.shape[1]
    streams = sorted({x for x in (_stream_site(Cell(s, None, None)) for s in sites) if x is not None})
    deltas = {s: torch.zeros(1, *_value_shape(model, s, n), dtype=model.dtype, device=model.device,
                             requires_grad=True) for s in sites}
    pat_sites = [Site("attn_pattern", layer) for layer in qk_layers]
    pat_leaves = {s: torch.zeros(1, model.n_heads, n, n, dtype=model.dtype, device=model.device, requires_grad=True)
                  for s in pat_sites}
    probe = _PatternProbe(pat_leaves) if pat_leaves else None
    cache = Cache(sorted({s.name for s in sites} | {s.name for s in streams}))
    result = model.run(pair.base, [cache, GradProbe(deltas)] + ([probe] if probe is not None else []), grad=True)
    last = result.last_logits()
    leaves = [deltas[s] for s in sites] + [pat_leaves[s] for s in pat_sites]
    grads = torch.autograd.grad(metric(last).sum(), leaves, allow_unused=True, retain_graph=bool(pat_sites))
    grad_of = {s: (g if g is not None else torch.zeros_like(d))[0].detach() for s, g, d in zip(sites, grads, leaves)}
    patterns: dict[int, _Pattern] = {}
    for s, g in zip(pat_sites, grads[len(sites):]):
        assert s.layer is not None and probe is not None
        g_a = torch.zeros_like(pat_leaves[s]) if g is None else g
        # the part of ∂metric/∂site that flows through this layer's pattern: a VJP of the pattern
        upstream = [x for x in sites if feeds_layer(Cell(x, None, None)) == s.layer]
        through = torch.autograd.grad(probe.values[s.layer], [deltas[x] for x in upstream], grad_outputs=g_a,
                                      allow_unused=True, retain_graph=True) if upstream else ()
        without = {x: grad_of[x] - (t[0].detach() if t is not None else 0.0) for x, t in zip(upstream, through)}
        patterns[s.layer] = _Pattern(probe.values[s.layer][0].detach(), g_a[0].detach(), without)
    values = {s: result.cache[s.name][0] for s in sites}
    stream = {s: result.cache[s.name][0] for s in streams}
    return values, grad_of, last.detach(), stream, patterns


def _pattern_terms(model: HookedModel, pair: Pair, cells: list[Cell], source: dict[Site, torch.Tensor],
                   patterns: dict[int, _Pattern], batch_size: int) -> dict[Cell, float]:
    """``Σ (A_patched - A_base) · ∂metric/∂A`` per cell, the patched pattern from truncated batched forwards.

    Where partial forwards are exact (:mod:`lmscope.interventions.partial`) a group of cells starts at its
    lowest position (the base run's KV cache before it) and its site's layer (the base run's ``resid_pre``), so
    each cell costs about one or two layers of the tokens from its position on; otherwise full forwards from
    layer 0, stopped after the pattern."""
    from lmscope.interventions.partial import forward_with_kv, kv_prefix, partial_forward_unsupported, run_from_layer

    partial = partial_forward_unsupported(model, int(pair.base.shape[1])) is None
    groups: dict[tuple[int, int], list[Cell]] = {}
    for c in cells:
        if feeds_layer(c) in patterns:
            groups.setdefault((feeds_layer(c), c.start_layer if partial else 0), []).append(c)
    kv, resid = None, {}
    if partial:
        starts = sorted({start for _, start in groups if start > 0})
        cache = Cache([f"resid_pre.{layer}" for layer in starts]) if starts else None
        _, kv = forward_with_kv(model, pair.base, [cache] if cache else [])
        resid = {layer: cache[f"resid_pre.{layer}"][0] for layer in starts} if cache else {}
    out: dict[Cell, float] = {}
    with torch.no_grad():
        for (layer, start), group in groups.items():
            pat = patterns[layer]
            group = sorted(group, key=lambda c: c.first_position)
            for k in range(0, len(group), batch_size):
                chunk = group[k:k + batch_size]
                n = len(chunk)
                p0 = min(c.first_position for c in chunk) if partial else 0
                entries: dict[Site, list[tuple[int, int | slice, int | None, torch.Tensor]]] = {}
                for row, c in enumerate(chunk):
                    col: int | slice = slice(None) if c.position is None else c.position - p0
                    entries.setdefault(c.site, []).append((row, col, c.index, cell_value(c, source[c.site])))
                grab = _PatternGrab(layer)
                try:
                    if partial:
                        hidden = None if start == 0 else resid[start][p0:].expand(n, -1, -1)
                        run_from_layer(model, hidden, start, pair.base[:, p0:].expand(n, -1),
                                       past=kv_prefix(model, kv, p0, n), interventions=[RowWrite(entries), grab])
                    else:
                        model.run(pair.base.expand(n, -1), [RowWrite(entries), grab])
                except _Stop:
                    pass
                assert grab.value is not None  # [n, heads, queries p0.., keys]
                diff = (grab.value.float() - pat.base.float()[None, :, p0:]) * pat.grad.float()[None, :, p0:]
                for row, c in enumerate(chunk):
                    out[c] = float(diff[row].sum())
    return out


def _value_shape(model: HookedModel, site: Site, n: int) -> tuple[int, ...]:
    """One prompt's value shape at ``site`` for ``n`` tokens: ``[n, ...]``, or ``[heads, n, n]`` for a map."""
    if site.kind in ATTENTION_MAP_SITES:
        return (model.n_heads, n, n)
    return (n, *model.site_shape(site))


def _to_stream(model: HookedModel, c: Cell, x: torch.Tensor) -> torch.Tensor:
    """A cell's slice ``x`` as what it adds to the residual stream: a head's through its rows of W_O, a neuron's
    through its row of the MLP's output matrix, a whole ``head_out`` summed over heads; other kinds as they are."""
    x = x.float()
    kind = c.site.kind
    if kind == "head_z":
        w_o = model.output_projection(c.start_layer)[0].float()
        return torch.einsum("...hd,hdm->...m", x, w_o) if c.head is None else x @ w_o[c.head]
    if kind == "head_out" and c.head is None:
        return x.sum(-2)
    if kind == "mlp_post":
        w_out = model.mlp_output_projection(c.start_layer)[0].float()
        return x @ w_out if c.neuron is None else x[..., None] * w_out[c.neuron]
    return x


def _relative(c: Cell, moved: float, scale: torch.Tensor) -> float:
    """``moved / ‖scale‖`` over the cell's positions, ``moved`` = ‖Δ‖ taken into the stream by :func:`_to_stream`:
    ``scale`` is the residual stream there, the cell's own activation (taken the same way) or, for kinds with no
    stream image (:func:`_stream_site` None), the site's own value at those positions."""
    kind = c.site.kind
    if kind == "attn_scores":  # masked keys hold the dtype's lowest value (or -inf): not part of the scores' size
        scale = scale[scale > torch.finfo(scale.dtype).min / 2]
    denom = float(scale.float().norm())
    return moved / denom if denom > 0 else float("inf")
