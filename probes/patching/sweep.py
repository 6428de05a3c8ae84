"""Activation-patching sweeps: one generic patcher and ready-made sweeps (TransformerLens ``patching.py`` style).

Convention (TransformerLens's default, "denoising"): the *base* run is the corrupt prompt and each
cell writes the *clean* activation at one (site, position) into it; the cell's value is
``metric(last-position logits of the patched corrupt run)``. ``direction="noise"`` swaps the roles
(corrupt activations written into the clean run). Clean and corrupt pair token ``i`` with token ``i``,
so they must have the same token length.

Methods (same cells, same :class:`PatchingResult`):

- ``"exact"`` (default): batched forwards that skip what a patch cannot change -- positions before
  the patched token come from the base run's KV cache, layers below the patched layer start from its
  cached ``resid_pre`` (:mod:`lmscope.interventions.partial`), and only the last position is unembedded.
  Cells are grouped in blocks of ``layer_block`` layers x ``position_block`` positions; a block starts
  at its lowest layer and first position (cells above it recompute a few unchanged values), so it
  equals the loop up to float rounding.
- ``"loop"``: one full forward per cell with the core ``Patch`` intervention (the reference).
- ``"attribution"``: attribution patching, see :mod:`.attribution`.
- ``"atp*"``: attribution patching with AtP*'s QK fix (exact attention pattern where the patch feeds it).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, Union

import torch

from lmscope.interventions.base import Intervention
from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.partial import partial_forward_unsupported
from lmscope.interventions.patch import Patch
from lmscope.interventions.positions import ForwardContext
from lmscope.interventions.sites import Site
from lmscope.interventions.specs import LayerSpec, resolve_layers

from .metrics import Metric
from .result import PatchingResult

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

#: Positions of a sweep: None = each token on its own, ``"all"`` = every token at once, or a list of ints.
Positions = Union[None, str, Sequence[int]]
METHODS = ("exact", "loop", "attribution", "atp*")
DIRECTIONS = ("denoise", "noise")
_PATCHABLE = ("embed", "resid_pre", "head_z", "attn_out", "resid_mid", "mlp_out", "resid_post")


@dataclass(frozen=True)
class Cell:
    """One patch: ``site`` (one head of ``head_z`` when ``head`` is set) at token ``position`` (None = all)."""

    site: Site
    head: int | None
    position: int | None

    @property
    def start_layer(self) -> int:
        return 0 if self.site.layer is None else self.site.layer

    @property
    def first_position(self) -> int:
        return 0 if self.position is None else self.position


@dataclass
class Pair:
    """The two prompts of a sweep as token ids ``[1, T]``: ``base`` is patched with values from ``source``."""

    base: torch.Tensor
    source: torch.Tensor
    labels: list[str]


def prepare_pair(model: HookedModel, clean: Any, corrupt: Any, direction: str = "denoise") -> Pair:
    """Tokenise one clean and one corrupt prompt; they must have the same token length."""
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    ids = {}
    for name, prompt in (("clean", clean), ("corrupt", corrupt)):
        batch = model.tokenize(prompt)
        if batch.input_ids.shape[0] != 1:
            raise InputError(f"{name} must be one prompt (a string or one token-id sequence), got "
                             f"{batch.input_ids.shape[0]}; sweep each pair separately.")
        ids[name] = batch.input_ids
    n_clean, n_corrupt = ids["clean"].shape[1], ids["corrupt"].shape[1]
    if n_clean != n_corrupt:
        raise InputError(f"clean has {n_clean} tokens {_pieces(model, ids['clean'])} but corrupt has {n_corrupt} "
                         f"{_pieces(model, ids['corrupt'])}; patching pairs token i with token i, so both prompts "
                         "need the same token length. Reword one (e.g. single-token names) or pass token ids "
                         "you have aligned yourself.")
    base, source = (ids["corrupt"], ids["clean"]) if direction == "denoise" else (ids["clean"], ids["corrupt"])
    return Pair(base, source, _token_labels(model, base[0]))


def _pieces(model: HookedModel, ids: torch.Tensor) -> list[str]:
    return _token_labels(model, ids[0], numbered=False)


def _token_labels(model: HookedModel, ids: torch.Tensor, numbered: bool = True) -> list[str]:
    toks = [model.tokenizer.decode([int(i)]) if model.tokenizer is not None else str(int(i)) for i in ids]
    return [f"{i}:{t}" for i, t in enumerate(toks)] if numbered else toks


def plan_cells(model: HookedModel, sites: str | Sequence[str], positions: Positions, heads: bool,
               n_tokens: int) -> tuple[list[list[Cell]], list[str], list[int | None]]:
    """The grid of cells ``[rows][cols]``, the row labels and the column positions."""
    resolved = model.resolve(sites if isinstance(sites, str) else list(sites))
    bad = [s.name for s in resolved if s.kind not in _PATCHABLE]
    if bad:
        raise InputError(f"Cannot patch {', '.join(bad)}; patchable kinds: {', '.join(_PATCHABLE)} "
                         "(use Edit for attn_pattern).")
    if heads and not any(s.kind == "head_z" for s in resolved):
        raise InputError("heads=True patches single heads of head_z sites, but no head_z site was given.")
    cols = _columns(positions, n_tokens)
    rows: list[tuple[Site, int | None]] = []
    for s in resolved:
        rows += [(s, h) for h in range(model.n_heads)] if heads and s.kind == "head_z" else [(s, None)]
    labels = [s.name if h is None else f"{s.name}:h{h}" for s, h in rows]
    return [[Cell(s, h, p) for p in cols] for s, h in rows], labels, cols


def _columns(positions: Positions, n_tokens: int) -> list[int | None]:
    if positions is None:
        return list(range(n_tokens))
    if positions == "all":
        return [None]
    if isinstance(positions, (str, int)) or isinstance(positions, bool):
        raise InputError(f"positions must be None (each token), 'all' (every token at once) or a list of ints, "
                         f"got {positions!r}.")
    out: list[int | None] = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int) or not -n_tokens <= p < n_tokens:
            raise InputError(f"Position {p!r} is outside the prompt's {n_tokens} tokens "
                             f"(valid: 0..{n_tokens - 1} or -{n_tokens}..-1).")
        out.append(p % n_tokens)
    if not out:
        raise InputError("positions is an empty list; pass None for every token.")
    return out


def source_values(model: HookedModel, pair: Pair, sites: Sequence[Site]) -> tuple[dict[Site, torch.Tensor],
                                                                                torch.Tensor]:
    """Site values of the source run (``[T, ...]`` each) and its last-position logits ``[1, vocab]``."""
    cache = Cache([s.name for s in sites])
    result = model.run(pair.source, [cache])
    return {s: result.cache[s.name][0] for s in sites}, result.last_logits()


class RowWrite(Intervention):
    """Write given values into given rows/columns (and heads) of raw ``[batch, seq, ...]`` site values.

    Internal to the exact sweep, which controls the batch layout itself (unpadded suffix forwards).
    ``entries[site]`` lists ``(row, column or slice, head or None, value)``.
    """

    def __init__(self, entries: dict[Site, list[tuple[int, int | slice, int | None, torch.Tensor]]]) -> None:
        super().__init__([s.name for s in entries])
        self.entries = entries

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        out = value.clone()
        for row, col, head, v in self.entries[site]:
            if head is None:
                out[row, col] = v.to(out.dtype)
            else:
                out[row, col, head] = v.to(out.dtype)
        return out


def exact_values(model: HookedModel, pair: Pair, cells: list[Cell], source: dict[Site, torch.Tensor],
                 metric: Metric, *, batch_size: int = 64, layer_block: int = 6, position_block: int = 2,
                 progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Metric of every cell by batched partial forwards; also returns the base run's last logits."""
    from tqdm.auto import tqdm

    from lmscope.interventions.partial import forward_with_kv, kv_prefix, run_from_layer

    for name, v in (("batch_size", batch_size), ("layer_block", layer_block), ("position_block", position_block)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive int, got {v!r}.")
    starts = sorted({c.start_layer for c in cells if c.start_layer > 0})
    cache = Cache([f"resid_pre.{layer}" for layer in starts]) if starts else None
    logits, kv = forward_with_kv(model, pair.base, [cache] if cache else [])
    resid = {layer: cache[f"resid_pre.{layer}"][0] for layer in starts} if cache else {}
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, c in enumerate(cells):
        buckets[(c.first_position // position_block, c.start_layer // layer_block)].append(i)
    chunks = [idx[k:k + batch_size] for idx in buckets.values() for k in range(0, len(idx), batch_size)]
    out = torch.empty(len(cells))
    show = len(chunks) > 8 if progress is None else progress
    for chunk in tqdm(chunks, desc="patching", disable=not show, leave=False):
        group = [cells[i] for i in chunk]
        p0, l0, n = min(c.first_position for c in group), min(c.start_layer for c in group), len(group)
        entries: dict[Site, list[tuple[int, int | slice, int | None, torch.Tensor]]] = defaultdict(list)
        for row, c in enumerate(group):
            col: int | slice = slice(None) if c.position is None else c.position - p0
            val = source[c.site] if c.position is None else source[c.site][c.position]
            entries[c.site].append((row, col, c.head, val if c.head is None else val[..., c.head, :]))
        hidden = None if l0 == 0 else resid[l0][p0:].expand(n, -1, -1)
        last = run_from_layer(model, hidden, l0, pair.base[:, p0:].expand(n, -1), past=kv_prefix(model, kv, p0, n),
                              interventions=[RowWrite(dict(entries))])
        out[chunk] = metric(last).detach().float().cpu()
    return out, logits[:, -1]


def loop_values(model: HookedModel, pair: Pair, cells: list[Cell], source: dict[Site, torch.Tensor],
                metric: Metric, progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: one full forward per cell with the core ``Patch`` intervention."""
    from tqdm.auto import tqdm

    head_sites = sorted({c.site for c in cells if c.head is not None})
    base_run = model.run(pair.base, [Cache([s.name for s in head_sites])] if head_sites else [])
    out = torch.empty(len(cells))
    show = len(cells) > 32 if progress is None else progress
    for i, c in enumerate(tqdm(cells, desc="patching (loop)", disable=not show, leave=False)):
        values = source[c.site]
        if c.head is not None:  # a Patch writes whole sites: keep the base run's other heads
            mixed = base_run.cache[c.site.name][0].clone()
            mixed[:, c.head] = values[:, c.head]
            values = mixed
        patched = model.run(pair.base, [Patch(c.site.name, values[None], positions=c.position)])
        out[i] = metric(patched.last_logits()).detach().float().cpu()[0]
    return out, base_run.last_logits()


def patching_sweep(model: HookedModel, clean: Any, corrupt: Any, sites: str | Sequence[str],
                   positions: Positions = None, metric: Metric | None = None, *, heads: bool = False,
                   method: str = "exact", direction: str = "denoise", batch_size: int = 64, layer_block: int = 6,
                   position_block: int = 2, progress: bool | None = None) -> PatchingResult:
    """Patch every (site [, head], position) cell and measure ``metric`` on the last position.

    ``sites``: names or wildcards (``"resid_pre.*"``, ``["attn_out.3", "mlp_out.3"]``); one row each, or
    one row per head for ``head_z`` sites with ``heads=True``. ``positions``: None = each token separately,
    ``"all"`` = every token at once, or a list of token indices. ``metric(logits [rows, vocab]) -> [rows]``.
    See the module docstring for the convention and the methods.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}.")
    if metric is None or not callable(metric):
        raise InputError("patching_sweep needs a metric: a function of last-position logits [rows, vocab] "
                         "returning [rows], e.g. lmscope.probes.patching.logit_diff(model, ' Paris', ' Rome').")
    pair = prepare_pair(model, clean, corrupt, direction)
    grid, row_labels, cols = plan_cells(model, sites, positions, heads, pair.base.shape[1])
    if method in ("attribution", "atp*"):
        from .attribution import attribution_sweep

        return attribution_sweep(model, pair, grid, row_labels, cols, metric, direction, qk_fix=method == "atp*",
                                 batch_size=batch_size)
    cells = [c for row in grid for c in row]
    source, source_logits = source_values(model, pair, sorted({c.site for c in cells}))
    unsupported = partial_forward_unsupported(model) if method == "exact" else None
    if unsupported is not None:
        warnings.warn(f"The fast exact sweep's partial forwards are not exact with {unsupported}; computing the "
                      "same map with one full forward per patch (method='loop').", stacklevel=2)
        method = "loop"
    if method == "exact":
        flat, base_logits = exact_values(model, pair, cells, source, metric, batch_size=batch_size,
                                         layer_block=layer_block, position_block=position_block, progress=progress)
    else:
        flat, base_logits = loop_values(model, pair, cells, source, metric, progress)
    return PatchingResult(flat.reshape(len(grid), len(cols)), row_labels, _col_labels(pair, cols),
                          _scalar(metric, base_logits), _scalar(metric, source_logits), method, direction,
                          getattr(metric, "__name__", "metric"))


def _col_labels(pair: Pair, cols: list[int | None]) -> list[str]:
    return ["all" if p is None else pair.labels[p] for p in cols]


def _scalar(metric: Metric, logits: torch.Tensor) -> float:
    with torch.no_grad():
        return float(metric(logits)[0])


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
               positions: Positions = "all", **kwargs: Any) -> PatchingResult:
    """Each head's ``head_z`` (rows ``head_z.L:hH``), every position at once by default or per position."""
    return patching_sweep(model, clean, corrupt, _layer_sites(model, "head_z", layers), positions, metric,
                          heads=True, **kwargs)
