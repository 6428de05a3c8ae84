"""Activation-patching sweeps: one generic patcher and ready-made sweeps (TransformerLens ``patching.py`` style).

Convention (TransformerLens's default, "denoising"): the *base* run is the corrupt prompt and each
cell writes the *clean* activation at one (site, position) into it; the cell's value is
``metric(last-position logits of the patched corrupt run)``. ``direction="noise"`` swaps the roles
(corrupt activations written into the clean run). Clean and corrupt pair token ``i`` with token ``i``,
so they must have the same token length.

Datasets: ``clean`` and ``corrupt`` may be lists of prompts (pair ``i`` = ``clean[i]``, ``corrupt[i]``;
pairs may differ in length from each other). Pairs of one length run together in every batch (no
padding: positions are each prompt's own token indices, negative ones from each prompt's end), and the
result holds the per-cell mean over pairs in ``values``, its standard error in ``stderr`` and every
pair's map in ``per_pair``. One pair gives exactly the single-pair result.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence, Union

import torch

from lmscope.interventions.base import Intervention
from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.partial import partial_forward_unsupported
from lmscope.interventions.patch import Patch
from lmscope.interventions.positions import ForwardContext
from lmscope.interventions.sites import Site, head_label
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
    """``n`` prompt pairs of one token length as ids ``[n, T]``: ``base`` is patched with values from ``source``.

    ``labels`` are the token labels of the first base prompt; ``index`` the pairs' places in the dataset.
    """

    base: torch.Tensor
    source: torch.Tensor
    labels: list[str]
    index: list[int] = field(default_factory=lambda: [0])

    def row(self, i: int) -> Pair:
        """The ``i``-th pair of this group alone."""
        return Pair(self.base[i:i + 1], self.source[i:i + 1], self.labels, [self.index[i]])

    def split(self, size: int) -> list[Pair]:
        """This group in pieces of at most ``size`` pairs (one batched pass holds at most ``size`` rows)."""
        return [Pair(self.base[k:k + size], self.source[k:k + size], self.labels, self.index[k:k + size])
                for k in range(0, len(self.index), size)]


def _prompts(model: HookedModel, prompts: Any) -> list[torch.Tensor]:
    """Each prompt's real token ids (padding dropped)."""
    batch = model.tokenize(prompts)
    keep = batch.attention_mask.bool()
    return [batch.input_ids[i][keep[i]] for i in range(batch.input_ids.shape[0])]


def prepare_pairs(model: HookedModel, clean: Any, corrupt: Any, direction: str = "denoise") -> list[Pair]:
    """Tokenise clean/corrupt prompt(s) into pairs grouped by token length (first-seen order).

    Each pair must have equal token lengths; different pairs may differ.
    """
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    cleans, corrupts = _prompts(model, clean), _prompts(model, corrupt)
    if len(cleans) != len(corrupts):
        raise InputError(f"clean has {len(cleans)} prompt(s) but corrupt has {len(corrupts)}; a sweep over a "
                         "dataset pairs clean[i] with corrupt[i], so give one corrupt prompt per clean prompt.")
    groups: dict[int, list[int]] = {}
    for i, (c, k) in enumerate(zip(cleans, corrupts)):
        if len(c) != len(k):
            which = "" if len(cleans) == 1 else f"pair {i}: "
            raise InputError(f"{which}clean has {len(c)} tokens {_token_labels(model, c, numbered=False)} but "
                             f"corrupt has {len(k)} {_token_labels(model, k, numbered=False)}; patching pairs "
                             "token i with token i, so both prompts need the same token length. Reword one (e.g. "
                             "single-token names) or pass token ids you have aligned yourself.")
        groups.setdefault(len(c), []).append(i)
    out = []
    for idx in groups.values():
        c, k = torch.stack([cleans[i] for i in idx]), torch.stack([corrupts[i] for i in idx])
        base, source = (k, c) if direction == "denoise" else (c, k)
        out.append(Pair(base, source, _token_labels(model, base[0]), idx))
    return out


def prepare_pair(model: HookedModel, clean: Any, corrupt: Any, direction: str = "denoise") -> Pair:
    """Tokenise one clean and one corrupt prompt; they must have the same token length."""
    pairs = prepare_pairs(model, clean, corrupt, direction)
    if len(pairs) != 1 or pairs[0].base.shape[0] != 1:
        raise InputError(f"This needs one prompt pair, got {sum(len(p.index) for p in pairs)}.")
    return pairs[0]


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
    labels = [head_label(s, h) for s, h in rows]
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
    """Site values of the source runs (``[n, T, ...]`` each) and their last-position logits ``[n, vocab]``."""
    cache = Cache([s.name for s in sites])
    result = model.run(pair.source, [cache])
    return {s: result.cache[s.name] for s in sites}, result.last_logits()


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
    for chunk in tqdm(chunks, desc="patching", disable=not show, leave=False):
        group = [cells[i] for i in chunk]
        p0, l0 = min(c.first_position for c in group), min(c.start_layer for c in group)
        entries: dict[Site, list[tuple[int, int | slice, int | None, torch.Tensor]]] = defaultdict(list)
        for j, c in enumerate(group):  # batch row j * n_pairs + i: cell j on pair i
            col: int | slice = slice(None) if c.position is None else c.position - p0
            for i in range(n_pairs):
                val = source[c.site][i] if c.position is None else source[c.site][i, c.position]
                entries[c.site].append((j * n_pairs + i, col, c.head, val if c.head is None else val[..., c.head, :]))
        rows = torch.arange(n_pairs).repeat(len(group))
        hidden = None if l0 == 0 else resid[l0][rows.to(resid[l0].device), p0:]
        last = run_from_layer(model, hidden, l0, pair.base[rows.to(pair.base.device), p0:],
                              past=kv_prefix(model, kv, p0, len(rows), rows=rows),
                              interventions=[RowWrite(dict(entries))])
        out[chunk] = _per_pair(metric, last.reshape(len(group), n_pairs, -1))
    return out, logits[:, -1]


def loop_values(model: HookedModel, pair: Pair, cells: list[Cell], source: dict[Site, torch.Tensor],
                metric: Metric | Sequence[Metric], progress: bool | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: one full forward per cell and pair with the core ``Patch`` intervention (a head cell
    patches only that head, ``Patch(..., heads=[h])``). Returns ``[cells, n]`` and the base logits ``[n, vocab]``."""
    from tqdm.auto import tqdm

    n_pairs = pair.base.shape[0]
    base_logits = model.run(pair.base).last_logits()
    out = torch.empty(len(cells), n_pairs)
    show = len(cells) * n_pairs > 32 if progress is None else progress
    for k, c in enumerate(tqdm(cells, desc="patching (loop)", disable=not show, leave=False)):
        for i in range(n_pairs):
            heads = None if c.head is None else [c.head]
            patch = Patch(c.site.name, source[c.site][i:i + 1], positions=c.position, heads=heads)
            patched = model.run(pair.base[i:i + 1], [patch])
            out[k, i] = _per_pair(metric, patched.last_logits()[:, None], first=i)[0, 0]
    return out, base_logits


def patching_sweep(model: HookedModel, clean: Any, corrupt: Any, sites: str | Sequence[str],
                   positions: Positions = None, metric: Metric | Sequence[Metric] | None = None, *,
                   heads: bool = False,
                   method: str = "exact", direction: str = "denoise", batch_size: int = 64, layer_block: int = 6,
                   position_block: int = 2, progress: bool | None = None) -> PatchingResult:
    """Patch every (site [, head], position) cell and measure ``metric`` on the last position.

    ``clean``/``corrupt``: one prompt each, or lists of prompts (a dataset of pairs; see the module
    docstring: mean, standard error and per-pair maps). ``sites``: names or wildcards (``"resid_pre.*"``,
    ``["attn_out.3", "mlp_out.3"]``); one row each, or one row per head for ``head_z`` sites with
    ``heads=True``. ``positions``: None = each token separately (pairs must then share one length),
    ``"all"`` = every token at once, or a list of token indices (negative from each prompt's end).
    ``metric(logits [rows, vocab]) -> [rows]``, or one metric per pair (a list, e.g. a logit difference between
    each pair's own answer tokens). ``batch_size`` bounds the rows of one batched forward
    (cells x pairs). See the module docstring for the convention and the methods.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}.")
    if metric is None or not (callable(metric) or isinstance(metric, (list, tuple)) and metric
                              and all(callable(m) for m in metric)):
        raise InputError("patching_sweep needs a metric: a function of last-position logits [rows, vocab] "
                         "returning [rows], e.g. lmscope.probes.patching.logit_diff(model, ' Paris', ' Rome'), "
                         "or a list of such functions, one per pair.")
    groups = prepare_pairs(model, clean, corrupt, direction)
    n_pairs = sum(len(g.index) for g in groups)
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1:
        groups = [part for g in groups for part in g.split(batch_size)]  # (exact_values reports a bad batch_size)
    metrics = list(metric) if isinstance(metric, (list, tuple)) else [metric] * n_pairs
    if len(metrics) != n_pairs:
        raise InputError(f"metric is a list of {len(metrics)} functions but there are {n_pairs} pairs; give one "
                         "metric per pair, or one function for all.")
    lengths = {g.base.shape[1] for g in groups}
    if positions is None and len(lengths) > 1:
        raise InputError(f"positions=None patches each token separately, but the pairs have {len(lengths)} "
                         f"different token lengths ({', '.join(map(str, sorted(lengths)))}); pass 'all' or a list "
                         "of token indices such as [-1] (negative ones count from each prompt's end).")
    if method in ("attribution", "atp*"):
        from .attribution import attribution_sweep

        results = {}
        for g in groups:
            grid, row_labels, cols = plan_cells(model, sites, positions, heads, g.base.shape[1])
            for i in range(len(g.index)):
                results[g.index[i]] = attribution_sweep(model, g.row(i), grid, row_labels, cols,
                                                        metrics[g.index[i]], direction, qk_fix=method == "atp*",
                                                        batch_size=batch_size)
        return results[0] if n_pairs == 1 else _combine([results[i] for i in range(n_pairs)], positions, lengths)
    unsupported = partial_forward_unsupported(model, max(lengths)) if method == "exact" else None
    if unsupported is not None:
        warnings.warn(f"The fast exact sweep's partial forwards are not exact with {unsupported}; computing the "
                      "same map with one full forward per patch (method='loop').", stacklevel=2)
        method = "loop"
    per_pair: list[torch.Tensor] = [torch.empty(0)] * n_pairs
    base_m, source_m = torch.empty(n_pairs), torch.empty(n_pairs)
    for g in groups:
        grid, row_labels, cols = plan_cells(model, sites, positions, heads, g.base.shape[1])
        cells = [c for row in grid for c in row]
        source, source_logits = source_values(model, g, sorted({c.site for c in cells}))
        mine = [metrics[i] for i in g.index]
        if method == "exact":
            flat, base_logits = exact_values(model, g, cells, source, mine, batch_size=batch_size,
                                             layer_block=layer_block, position_block=position_block,
                                             progress=progress)
        else:
            flat, base_logits = loop_values(model, g, cells, source, mine, progress)
        with torch.no_grad():
            base_m[g.index] = _per_pair(mine, base_logits[None])[0]
            source_m[g.index] = _per_pair(mine, source_logits[None])[0]
        for i, at in enumerate(g.index):
            per_pair[at] = flat[:, i].reshape(len(grid), len(cols))
    name = getattr(metrics[0], "__name__", "metric")
    if n_pairs == 1:
        return PatchingResult(per_pair[0], row_labels, _col_labels(groups[0], cols), float(base_m[0]),
                              float(source_m[0]), method, direction, name)
    stacked = torch.stack(per_pair)
    return PatchingResult(stacked.mean(0), row_labels, _dataset_col_labels(positions, cols, lengths),
                          float(base_m.mean()), float(source_m.mean()), method, direction, name,
                          per_pair=stacked, stderr=_stderr(stacked), pair_base_metrics=base_m.tolist(),
                          pair_source_metrics=source_m.tolist())


def _stderr(stacked: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean over the first axis (sample standard deviation / sqrt(n))."""
    return stacked.std(0, unbiased=True) / stacked.shape[0] ** 0.5


def _per_pair(metric: Metric | Sequence[Metric], logits: torch.Tensor, first: int = 0) -> torch.Tensor:
    """``[cells, n]`` metric values of ``logits [cells, n, vocab]``: pair ``i`` (counted from ``first``) is scored
    by ``metric[first + i]`` (one function for all: a single call)."""
    with torch.no_grad():
        if callable(metric):
            return metric(logits.flatten(0, 1)).detach().float().cpu().reshape(logits.shape[:2])
        funcs = list(metric)[first:first + logits.shape[1]]
        if all(f is funcs[0] for f in funcs):
            return _per_pair(funcs[0], logits)
        return torch.stack([f(logits[:, i]).detach().float().cpu() for i, f in enumerate(funcs)], dim=1)


def _dataset_col_labels(positions: Positions, cols: list[int | None], lengths: set[int]) -> list[str]:
    """Column labels of a dataset sweep: token indices (as given when the pairs differ in length), or ``all``."""
    if positions == "all":
        return ["all"]
    if len(lengths) == 1 or positions is None:
        return [str(p) for p in cols]
    assert isinstance(positions, Sequence)
    return [str(p) for p in positions]


def _combine(results: list[PatchingResult], positions: Positions, lengths: set[int]) -> PatchingResult:
    """Attribution maps of single pairs into one dataset result (mean, standard error, per pair)."""
    first = results[0]
    stacked = torch.stack([r.values for r in results])
    extras = {k: torch.stack([r.extras[k] for r in results]).mean(0) for k in first.extras}
    notes = list(dict.fromkeys(n for r in results for n in r.notes))
    base = [r.base_metric for r in results]
    source = [r.source_metric for r in results]
    cols = [None if c == "all" else int(c.split(":")[0]) for c in first.col_labels]
    return PatchingResult(stacked.mean(0), first.row_labels, _dataset_col_labels(positions, cols, lengths),
                          sum(base) / len(base), sum(source) / len(source), first.method, first.direction,
                          first.metric_name, extras, notes, per_pair=stacked, stderr=_stderr(stacked),
                          pair_base_metrics=base, pair_source_metrics=source)


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
    """Each head's ``head_z`` (rows ``head_z.L:hH``), every position at once by default or per position;
    ``result.by_head()`` gives the ``[layers, heads(, positions)]`` tensor."""
    return patching_sweep(model, clean, corrupt, _layer_sites(model, "head_z", layers), positions, metric,
                          heads=True, **kwargs)
