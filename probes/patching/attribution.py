"""Attribution patching (AtP, Nanda 2023; Kramár et al. 2024): the sweep's first-order approximation.

One forward of the source run, one forward + one backward of the base run. For a cell that
writes source values ``a'`` over base values ``a`` at some site:

    metric(patched) ≈ metric(base) + (a' - a) · ∂metric/∂a   (summed over the cell's positions/head)

Known failure modes, handled as far as a linear estimate can:

- **Large patches.** The estimate is only good while ``a' - a`` is small. Each cell's
  ``relative_delta`` (in ``result.extras``) is ``‖Δ‖ / ‖residual stream‖`` at that layer and position
  (``head_z`` deltas mapped to the stream through ``W_O`` first); cells above
  :data:`LARGE_DELTA` are counted in ``result.notes``. Verify those with the exact sweep.
- **Attention saturation.** A patch that moves a downstream attention logit across a saturated
  softmax gets a near-zero gradient (false negatives). AtP*'s fix recomputes the softmax exactly for
  query/key contributions; it is *not* implemented here, and every result says so in ``notes``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.base import Intervention
from lmscope.interventions.cache import Cache
from lmscope.interventions.positions import ForwardContext
from lmscope.interventions.sites import Site

from .metrics import Metric
from .result import PatchingResult

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

    from .sweep import Cell, Pair

#: ``relative_delta`` above this marks a cell where the linear estimate is doubtful.
LARGE_DELTA = 0.5
QK_NOTE = ("Attribution patching linearises every downstream attention softmax; saturated attention can hide "
           "real effects (false negatives). The AtP* QK fix (exact softmax recomputation for query/key "
           "contributions) is not implemented: confirm important cells with method='exact'.")


class GradProbe(Intervention):
    """Adds a zero leaf tensor to each site, so ``∂metric/∂site`` is the gradient of that leaf."""

    def __init__(self, deltas: dict[Site, torch.Tensor]) -> None:
        super().__init__([s.name for s in deltas])
        self.deltas = deltas

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        return value + self.deltas[site].to(value.dtype)


def attribution_sweep(model: HookedModel, pair: Pair, grid: list[list[Cell]], row_labels: list[str],
                      cols: list[int | None], metric: Metric, direction: str) -> PatchingResult:
    """The AtP estimate of every cell of ``grid`` (see :func:`lmscope.probes.patching.patching_sweep`)."""
    from .sweep import _col_labels, _scalar, source_values

    sites = sorted({c.site for row in grid for c in row})
    source_rows, source_logits = source_values(model, pair, sites)
    source = {s: v[0] for s, v in source_rows.items()}  # attribution runs one pair at a time
    base_vals, grads, base_logits, stream = _base_gradients(model, pair, sites, metric)
    est = torch.empty(len(grid), len(cols))
    rel = torch.empty(len(grid), len(cols))
    base_metric = _scalar(metric, base_logits)
    with torch.no_grad():
        for r, row in enumerate(grid):
            for k, c in enumerate(row):
                sel = slice(None) if c.position is None else slice(c.position, c.position + 1)
                delta = (source[c.site] - base_vals[c.site])[sel]
                grad = grads[c.site][sel]
                if c.head is not None:
                    delta, grad = delta[:, c.head], grad[:, c.head]
                est[r, k] = base_metric + float((delta.float() * grad.float()).sum())
                rel[r, k] = _relative(model, c, delta, stream[_stream_site(c)][sel])
    n_large = int((rel > LARGE_DELTA).sum())
    notes = [QK_NOTE]
    if n_large:
        notes.append(f"{n_large} of {rel.numel()} cells patch more than {LARGE_DELTA:g} of the residual stream's "
                     "norm (extras['relative_delta']); the linear estimate is least reliable there.")
    return PatchingResult(est, row_labels, _col_labels(pair, cols), base_metric, _scalar(metric, source_logits),
                          "attribution", direction, getattr(metric, "__name__", "metric"),
                          {"relative_delta": rel}, notes)


def _stream_site(c: Cell) -> Site:
    if c.site.kind == "resid_post":
        return c.site
    return Site("resid_pre", c.start_layer)


def _base_gradients(model: HookedModel, pair: Pair, sites: list[Site], metric: Metric,
                    ) -> tuple[dict[Site, torch.Tensor], dict[Site, torch.Tensor], torch.Tensor, dict[Site, Any]]:
    """Base-run values, ∂metric/∂site (``[T, ...]`` each), last logits, and the residual stream per layer."""
    from .sweep import Cell as _Cell

    n = pair.base.shape[1]
    streams = sorted({_stream_site(_Cell(s, None, None)) for s in sites})
    deltas = {s: torch.zeros(1, n, *model.site_shape(s), dtype=model.dtype, device=model.device,
                             requires_grad=True) for s in sites}
    cache = Cache(sorted({s.name for s in sites} | {s.name for s in streams}))
    result = model.run(pair.base, [cache, GradProbe(deltas)], grad=True)
    last = result.last_logits()
    leaves = [deltas[s] for s in sites]
    grads = torch.autograd.grad(metric(last).sum(), leaves, allow_unused=True)
    grad_of = {s: (g if g is not None else torch.zeros_like(d))[0].detach() for s, g, d in zip(sites, grads, leaves)}
    values = {s: result.cache[s.name][0] for s in sites}
    stream = {s: result.cache[s.name][0] for s in streams}
    return values, grad_of, last.detach(), stream


def _relative(model: HookedModel, c: Cell, delta: torch.Tensor, stream: torch.Tensor) -> float:
    """‖Δ‖ / ‖stream‖ over the cell's positions; a head's Δ is taken through its rows of W_O."""
    if c.site.kind == "head_z":
        w_o, _ = model.output_projection(c.start_layer)
        if c.head is None:
            delta = torch.einsum("phd,hdm->pm", delta.float(), w_o.float())
        else:
            delta = delta.float() @ w_o[c.head].float()
    denom = float(stream.float().norm())
    return float(delta.float().norm()) / denom if denom > 0 else float("inf")
