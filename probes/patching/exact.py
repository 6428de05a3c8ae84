"""The exact batched engine: every cell's metric from partial forwards that skip what a patch cannot change.

Positions before a cell's patched token come from the base run's KV cache and layers below its patched
layer start from the base run's cached ``resid_pre`` (:mod:`lmscope.interventions.partial`); only the
last position is unembedded. Cells are bucketed in blocks of ``layer_block`` layers x ``position_block``
positions; a batch starts at its cells' lowest layer and first position (cells above it recompute a few
unchanged values), so it equals the one-forward-per-cell loop (:mod:`.loop`) up to float rounding.
:class:`RowWrite` is the intervention that writes each batch row's cell (attribution patching's QK fix
uses it too).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.base import Intervention
from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.positions import ForwardContext
from lmscope.interventions.progress import bar_disable
from lmscope.interventions.sites import ATTENTION_MAP_SITES, Site

from .metrics import Metric
from .pairs import Cell, Pair, cell_value
from .scoring import pair_scores

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


class RowWrite(Intervention):
    """Write given values into given rows/columns (and heads or neurons) of raw ``[batch, seq, ...]`` site values.

    Internal to the exact sweep, which controls the batch layout itself (unpadded suffix forwards).
    ``entries[site]`` lists ``(row, column or slice, head / neuron or None, value)``; the column is a query
    position of an attention map ``[batch, heads, query, key]`` (and the index its head).
    """

    def __init__(self, entries: dict[Site, list[tuple[int, int | slice, int | None, torch.Tensor]]]) -> None:
        super().__init__([s.name for s in entries])
        self.entries = entries

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        out = value.clone()
        is_map = site.kind in ATTENTION_MAP_SITES
        for row, col, index, v in self.entries[site]:
            where: tuple[Any, ...] = (row, col) if index is None else (row, col, index)
            if is_map:
                where = (row, slice(None) if index is None else index, col)
            out[where] = v.to(out.dtype)
        return out


def exact_values(model: HookedModel, pair: Pair, cells: list[Cell], source: dict[Site, torch.Tensor],
                 metric: Metric | Sequence[Metric], *, batch_size: int = 64, layer_block: int = 6,
                 position_block: int = 2,
                 progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Metric of every cell ``[cells, n]`` for the ``n`` pairs of ``pair`` by batched partial forwards; also
    returns the base runs' last logits ``[n, vocab]``. Each batch holds a few cells x every pair (one base
    forward with a KV cache for all of them), so ``n`` pairs cost one pass per block, not ``n`` sweeps."""
    from tqdm.auto import tqdm

    from lmscope.interventions.partial import forward_with_kv, kv_prefix, run_from_layer

    for name, v in (("batch_size", batch_size), ("layer_block", layer_block), ("position_block", position_block)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive int, got {v!r}.")
    starts = sorted({c.start_layer for c in cells if c.start_layer > 0})
    cache = Cache([f"resid_pre.{layer}" for layer in starts]) if starts else None
    logits, kv = forward_with_kv(model, pair.base, [cache] if cache else [])
    resid = {layer: cache[f"resid_pre.{layer}"] for layer in starts} if cache else {}
    n_pairs = pair.base.shape[0]
    per_chunk = max(1, batch_size // n_pairs)
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, c in enumerate(cells):
        buckets[(c.first_position // position_block, c.start_layer // layer_block)].append(i)
    chunks = [idx[k:k + per_chunk] for idx in buckets.values() for k in range(0, len(idx), per_chunk)]
    out = torch.empty(len(cells), n_pairs)
    show = len(chunks) > 8 if progress is None else progress
    for chunk in tqdm(chunks, desc="patching", disable=bar_disable(show), leave=False):
        group = [cells[i] for i in chunk]
        p0, l0 = min(c.first_position for c in group), min(c.start_layer for c in group)
        entries: dict[Site, list[tuple[int, int | slice, int | None, torch.Tensor]]] = defaultdict(list)
        for j, c in enumerate(group):  # batch row j * n_pairs + i: cell j on pair i
            col: int | slice = slice(None) if c.position is None else c.position - p0
            for i in range(n_pairs):
                entries[c.site].append((j * n_pairs + i, col, c.index, cell_value(c, source[c.site][i])))
        rows = torch.arange(n_pairs).repeat(len(group))
        hidden = None if l0 == 0 else resid[l0][rows.to(resid[l0].device), p0:]
        last = run_from_layer(model, hidden, l0, pair.base[rows.to(pair.base.device), p0:],
                              past=kv_prefix(model, kv, p0, len(rows), rows=rows),
                              interventions=[RowWrite(dict(entries))])
        out[chunk] = pair_scores(metric, last.reshape(len(group), n_pairs, -1))
    return out, logits[:, -1]
