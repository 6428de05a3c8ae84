"""Running binding prompts: candidate log-probs, frozen contexts, accuracy and calibrated accuracy.

Every experiment scores a prompt by the log-probabilities (full-vocabulary log-softmax at the last token) of
the answer tokens of its candidate attributes. Interventions are built per batch by a callback, because
their token spans differ per prompt.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from lmscope.interventions.base import Intervention, Interventions, as_interventions
from lmscope.interventions.cache import ActivationCache, Cache, session_cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.inputs import pad as pad_ids
from lmscope.interventions.kv import build_cache, output_cache
from lmscope.interventions.partial import partial_forward_unsupported
from lmscope.interventions.patch import Patch, to_token_coordinates
from lmscope.interventions.positions import ForwardContext
from lmscope.interventions.sites import Site

from .prompts import BindingPrompt

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

MakeInterventions = Callable[[Sequence[int], "FrozenContext | None"], list[Intervention]]
METHODS = ("kv", "full")


class FrozenContext:
    """The clean ``resid_pre`` of every layer for a batch, as a ``Patch`` over each row's context positions.

    Applied first, it makes a run recompute only the question part: every context position at every layer
    is overwritten with its clean value (binding interventions then add to or replace some of them).
    """

    def __init__(self, model: HookedModel, prompts: Sequence[BindingPrompt], cache: object) -> None:
        self.prompts = list(prompts)
        self.patch = Patch("resid_pre.*", cache, positions=[slice(0, p.context_len) for p in prompts])
        self.n_layers = model.n_layers
        #: the KV path's write planning keeps the batch's clean context cells here (layer -> cells)
        self.plan_memo: dict[int, torch.Tensor] | None = None


def candidate_logprobs(model: HookedModel, prompts: Sequence[BindingPrompt], candidates: Sequence[Sequence[int]],
                       interventions: Interventions = (), *,
                       token_positions: Sequence[Sequence[int]] | None = None,
                       cache: bool = False) -> tuple[torch.Tensor, object]:
    """Log-probs ``[n, k]`` of each prompt's candidate tokens at its last token (one forward).

    ``token_positions`` gives the position id of every token of every prompt (the model sees these instead
    of 0..n-1; padding gets 0). ``cache=True`` also records ``resid_pre`` of every layer and returns the
    ``ActivationCache``.
    """
    ivs = as_interventions(interventions) + ([Cache("resid_pre.*")] if cache else [])
    batch = pad_ids([list(p.ids) for p in prompts], _pad_id(model), "left")
    position_ids = None
    if token_positions is not None:
        position_ids = torch.zeros_like(batch.input_ids)
        width = batch.input_ids.shape[1]
        for i, (p, pos) in enumerate(zip(prompts, token_positions)):
            if len(pos) != len(p.ids):
                raise InputError(f"Prompt {i} has {len(p.ids)} tokens but {len(pos)} position ids.")
            position_ids[i, width - len(pos):] = torch.as_tensor(list(pos))
    result = model.run(batch, ivs, position_ids=position_ids)
    logp = torch.log_softmax(result.last_logits().float(), dim=-1)
    idx = torch.tensor([list(c) for c in candidates], device=logp.device)
    return logp.gather(1, idx).cpu(), (result.cache if cache else None)


def score(model: HookedModel, prompts: Sequence[BindingPrompt], make: MakeInterventions | None = None, *,
          candidates: Sequence[Sequence[int]] | None = None, batch_size: int = 16, progress: bool = True,
          desc: str = "binding", method: str = "kv") -> torch.Tensor:
    """Candidate log-probs ``[n, k]`` of all ``prompts`` under the interventions ``make(rows, frozen)`` builds
    (``rows`` = the batch's indices into ``prompts``); see :func:`score_many`."""
    return score_many(model, prompts, {"x": make}, candidates=candidates, batch_size=batch_size,
                      progress=progress, desc=desc, method=method)["x"]


def score_many(model: HookedModel, prompts: Sequence[BindingPrompt], makes: dict[str, MakeInterventions | None], *,
               candidates: Sequence[Sequence[int]] | None = None, batch_size: int = 16, progress: bool = True,
               desc: str = "binding", method: str = "kv") -> dict[Any, torch.Tensor]:
    """Candidate log-probs ``[n, k]`` per condition (``None`` = clean run).

    ``method="full"``: each batch runs clean once, caching ``resid_pre`` of every layer when some condition
    needs it: that run gives the clean scores and the :class:`FrozenContext` every intervened condition starts
    from; one more full-prompt forward per intervened condition.

    ``method="kv"`` (default; same results up to float rounding): each distinct context runs once (prompts
    that share it, e.g. a calibration query and one query per slot, share that forward) and keeps its KV
    cache; clean scores run only the question tokens over it. Under the frozen context the ``resid_pre`` of
    every context position at every layer is fixed (its clean value, or what the condition's interventions
    write there), so a condition's context K/V equal the clean ones except at the positions its interventions
    change: those tokens run again (original position ids, ``resid_pre`` of every layer overwritten with the
    intended values, their stale cache columns masked out), once per context together with the question
    prefix its prompts share, and each prompt then runs only the rest of its question (pass the queries of
    every slot of a context in one call to share that work; see :func:`_question_logprobs`). A
    condition whose interventions write anything but ``resid_pre`` of context positions, or that does not
    apply the frozen context, runs the full prompt instead; so do models where reusing a prefix cache is not
    exact (ALiBi; sliding windows shorter than twice the longest prompt).
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
    cands: list[Sequence[int]] = [p.candidates for p in prompts] if candidates is None else list(candidates)
    if len({len(c) for c in cands}) > 1:
        raise InputError("Every prompt must have the same number of candidates.")
    if method == "kv" and prompts and kv_unsupported(model, prompts) is None:
        return _score_many_kv(model, prompts, makes, cands, batch_size, progress, desc)
    need_cache = any(m is not None for m in makes.values())
    out: dict[str, list[torch.Tensor]] = {k: [] for k in makes}
    for s in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        chunk, cc = list(prompts[s:s + batch_size]), cands[s:s + batch_size]
        clean, act = candidate_logprobs(model, chunk, cc, cache=need_cache)
        frozen = FrozenContext(model, chunk, act) if need_cache else None
        for name, make in makes.items():
            out[name].append(clean if make is None else
                             candidate_logprobs(model, chunk, cc, make(range(s, s + len(chunk)), frozen))[0])
    return {k: torch.cat(v) if v else torch.zeros(0, 0) for k, v in out.items()}


# -- the KV path ---------------------------------------------------------------------------------------------

def _pad_id(model: HookedModel) -> int:
    pad = model.tokenizer.pad_token_id if model.tokenizer is not None else None
    return int(pad) if pad is not None else 0


def kv_unsupported(model: HookedModel, prompts: Sequence[BindingPrompt]) -> str | None:
    """Why the KV path is not exact for ``prompts`` on ``model`` (None when it is).

    A sliding window is harmless when no forward spans it: the KV path's forwards hold at most a context
    plus its rewritten tokens plus a question (under twice the longest prompt), so a window longer than that
    masks nothing (Gemma 2/3's 512+ windows and binding prompts of ~60 tokens).
    """
    longest = max(len(p.ids) for p in prompts)
    return partial_forward_unsupported(model, 2 * longest + 1)


def _forward_kwargs(model: HookedModel) -> tuple[str, bool]:
    from lmscope.interventions.kv import cache_kwarg

    return cache_kwarg(model), "logits_to_keep" in inspect.signature(model.hf_model.forward).parameters


class _ContextStore:
    """Context forwards (attention mask, KV per layer, clean ``resid_pre``) memoised by their token ids."""

    def __init__(self, model: HookedModel, acts: bool) -> None:
        self.model, self.acts = model, acts
        self.memo: dict[tuple[tuple[int, ...], ...], Any] = {}


_STORE: list[_ContextStore] = []


@contextmanager
def shared_contexts(model: HookedModel, acts: bool = False) -> Iterator[None]:
    """Within the block, KV-path scoring runs each batch of contexts once and reuses it across calls
    (calibration and per-slot queries of the same contexts); ``acts`` also records ``resid_pre`` on the first
    forward (later calls that freeze the context need it)."""
    _STORE.append(_ContextStore(model, acts))
    try:
        yield
    finally:
        _STORE.pop()


def _context_forward(model: HookedModel, contexts: list[tuple[int, ...]],
                     acts: bool) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], Any]:
    """Run the (left-padded) contexts once: attention mask, per-layer (K, V), and the ``resid_pre`` cache."""
    store = next((s for s in reversed(_STORE) if s.model is model), None)
    key = tuple(contexts)
    if store is not None and key in store.memo and (not acts or store.memo[key][2] is not None):
        return store.memo[key]
    acts = acts or (store is not None and store.acts)
    batch = pad_ids([list(c) for c in contexts], _pad_id(model), "left")
    ids, mask = batch.input_ids.to(model.device), batch.attention_mask.to(model.device)
    _, keep = _forward_kwargs(model)
    with model.apply([Cache("resid_pre.*")] if acts else []) as session, torch.no_grad():
        out = model.hf_model(input_ids=ids, attention_mask=mask, position_ids=batch.position_ids.to(model.device),
                             use_cache=True, **({"logits_to_keep": 1} if keep else {}))
    cache: Any = output_cache(out)
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    result = (mask, kv, session_cache(model, session, mask) if acts else None)
    if store is not None:
        store.memo[key] = result
    return result


def context_acts(model: HookedModel, prompts: Sequence[BindingPrompt]) -> ActivationCache:
    """Clean ``resid_pre`` of every layer over the prompts' contexts (one forward, no logits but the last)."""
    acts = _context_forward(model, [tuple(p.ids[:p.context_len]) for p in prompts], True)[2]
    assert acts is not None
    return acts


def _rows_of(model: HookedModel, acts: Any, rmap: torch.Tensor) -> ActivationCache:
    idx = rmap.to(acts.attention_mask.device)
    return ActivationCache(model, {model.resolve(name)[0]: acts[name][idx.to(acts[name].device)] for name in acts},
                           acts.attention_mask[idx])


class _WriteTokens(Intervention):
    """Internal: overwrite ``resid_pre`` of every layer at the given (row, column) cells of the forward."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, values: list[torch.Tensor]) -> None:
        super().__init__("resid_pre.*")
        self.rows, self.cols, self.values = rows, cols, values

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        assert site.layer is not None
        out = value.clone()
        out[self.rows.to(value.device), self.cols.to(value.device)] = \
            self.values[site.layer].to(device=value.device, dtype=value.dtype)
        return out


def _plan_writes(model: HookedModel, chunk: list[BindingPrompt], ivs: list[Intervention], frozen: FrozenContext,
                 acts: ActivationCache) -> tuple[list[list[int]], list[torch.Tensor]] | None:
    """What ``ivs`` write at the context positions under the frozen context: per row, the token indices whose
    ``resid_pre`` differs from the clean one at some layer, and per layer their intended values (row-major).

    The interventions are applied, in order, to a full-prompt layout holding the clean context values (and
    fixed random values elsewhere), exactly as a forward would hand them the ``resid_pre`` sites. None when
    the KV path cannot reproduce them: a site other than ``resid_pre``, no frozen context, or a write outside
    the context.
    """
    if not any(iv is frozen.patch for iv in ivs):
        return None
    per_site: dict[Site, list[Intervention]] = {}
    for iv in ivs:
        sites = iv.sites(model)
        if any(s.kind != "resid_pre" for s in sites):
            return None
        iv.bind(model)
        iv.start()
        for site in sites:
            per_site.setdefault(site, []).append(iv)
    batch = pad_ids([list(p.ids) for p in chunk], _pad_id(model), "left")
    b, width = batch.input_ids.shape
    mask = batch.attention_mask.to(model.device)
    ctx = ForwardContext(mask, 0, width)
    rows = torch.cat([torch.full((p.context_len,), i) for i, p in enumerate(chunk)])
    toks = torch.cat([torch.arange(p.context_len) for p in chunk])
    cols = toks + torch.tensor([width - len(p.ids) for p in chunk])[rows]
    in_ctx = torch.zeros(b, width, dtype=torch.bool)
    in_ctx[rows, cols] = True
    outside = ~in_ctx
    changed = torch.zeros(rows.numel(), dtype=torch.bool)
    intended = []
    if frozen.plan_memo is None:  # per batch, shared by its conditions: the clean context cells, one noise draw
        frozen.plan_memo = {}
        gen = torch.Generator().manual_seed(0)
        for layer in range(model.n_layers):
            name = model.resolve(f"resid_pre.{layer}")[0].name
            clean = to_token_coordinates(acts[name], acts.attention_mask)
            frozen.plan_memo[layer] = clean[rows, toks]
            if layer == 0:  # it only has to differ from what a write would put there
                frozen.plan_memo[-1] = torch.randn(b, width, clean.shape[-1], generator=gen).to(
                    device=clean.device, dtype=clean.dtype)
    noise = frozen.plan_memo[-1]
    for layer in range(model.n_layers):
        site = model.resolve(f"resid_pre.{layer}")[0]
        clean_cells = frozen.plan_memo[layer]
        value = noise.clone()
        value[rows, cols] = clean_cells
        todo = per_site.get(site, [])
        if todo and todo[0] is frozen.patch:  # applied first it writes the clean values the layout already holds
            todo = todo[1:]
        for iv in todo:
            new = iv(value, site, ctx)
            if new is not None:
                value = new
        if not torch.equal(value[outside], noise[outside]):
            return None
        cells = value[rows, cols]
        changed |= (cells != clean_cells).any(-1).cpu()
        intended.append(cells)
    written = [toks[(rows == i) & changed].tolist() for i in range(b)]
    return written, [v[changed.to(v.device)] for v in intended]


def _kv_cache(model: HookedModel, kv: list[tuple[torch.Tensor, torch.Tensor]], idx: torch.Tensor) -> Any:
    """A fresh ``DynamicCache`` holding rows ``idx`` of the per-layer ``(K, V)`` list."""
    return build_cache(model, [(k[idx], v[idx]) for k, v in kv])


def _left_pad(seqs: list[list[int]], poss: list[list[int]], pad: int) -> tuple[torch.Tensor, ...]:
    """Left-padded ``ids``, ``position_ids`` and attention mask ``[rows, longest]`` of new tokens."""
    n = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    pos = torch.zeros(len(seqs), n, dtype=torch.long)
    new_mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for i, (seq, ps) in enumerate(zip(seqs, poss)):
        if seq:
            ids[i, n - len(seq):], pos[i, n - len(seq):], new_mask[i, n - len(seq):] = \
                torch.tensor(seq), torch.tensor(ps), 1
    return ids, pos, new_mask


def _units(chunk: list[BindingPrompt], rmap: torch.Tensor, written: list[list[int]],
           values: list[torch.Tensor] | None) -> tuple[list[list[int]], list[int]]:
    """Rows that may share one run of their rewritten tokens and common question prefix: same context, same
    rewritten tokens with the same intended values at every layer. Returns the units (row lists) and, per
    unit, the length of the question prefix all its rows share (each row keeps at least its last token)."""
    offsets = [0]
    for w in written:
        offsets.append(offsets[-1] + len(w))
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, w in enumerate(written):
        key: tuple[Any, ...] = (int(rmap[i]), tuple(w))
        first = groups.get(key, [None])[0]
        if first is not None and w and values is not None and not all(
                torch.equal(v[offsets[first]:offsets[first + 1]], v[offsets[i]:offsets[i + 1]]) for v in values):
            key = (*key, i)  # same tokens, other values: its own unit
        groups.setdefault(key, []).append(i)
    units = list(groups.values())
    shared = []
    for rows in units:
        qs = [chunk[i].ids[chunk[i].context_len:] for i in rows]
        limit = min(len(q) for q in qs) - 1
        k = 0
        while k < limit and all(q[k] == qs[0][k] for q in qs):
            k += 1
        shared.append(k)
    return units, shared


def _question_logprobs(model: HookedModel, chunk: list[BindingPrompt], cands: list[Sequence[int]],
                       mask: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]], rmap: torch.Tensor,
                       written: list[list[int]] | None = None, values: list[torch.Tensor] | None = None,
                       ) -> torch.Tensor:
    """Candidate log-probs of ``chunk`` over row ``rmap[i]`` of the contexts' KV cache, in two forwards.

    1. Once per unit (rows with the same context and the same rewrites, see :func:`_units`): its rewritten
       context tokens (``resid_pre`` of every layer overwritten with ``values``, original position ids,
       their stale cache columns masked out) plus the question prefix its rows share (e.g. "Question: Which
       city does" before the queried name), appended to the context's cache.
    2. Per row: the rest of its question over its unit's extended cache; logits of the last token only.

    Every token sees exactly the keys and values it would see in one forward over the whole prompt, so the
    result equals the one-forward version (and the full prompt) up to float rounding; the shared prefix and
    the rewritten tokens run once per context instead of once per queried slot.
    """
    written = written or [[] for _ in chunk]
    dev, pad = model.device, _pad_id(model)
    kw, keep = _forward_kwargs(model)
    last = {"logits_to_keep": 1} if keep else {}
    units, shared = _units(chunk, rmap, written, values)
    heads = [rows[0] for rows in units]
    cidx = rmap[heads].to(dev)
    past_mask = mask[cidx].clone()
    wc = mask.shape[1]
    seqs, poss = [], []
    wrows: list[int] = []
    wcols: list[int] = []
    sel: list[int] = []
    offsets = [0]
    for w in written:
        offsets.append(offsets[-1] + len(w))
    for u, (i, s) in enumerate(zip(heads, shared)):
        p, w = chunk[i], written[i]
        seqs.append([p.ids[t] for t in w] + list(p.ids[p.context_len:p.context_len + s]))
        poss.append(list(w) + list(range(p.context_len, p.context_len + s)))
        pad_c = wc - int(mask[cidx[u]].sum())
        for t in w:
            past_mask[u, pad_c + t] = 0
        sel.extend(range(offsets[i], offsets[i + 1]))
    ext_kv, ext_mask = kv, past_mask
    if any(seqs):
        ids, pos, new_mask = _left_pad(seqs, poss, pad)
        n1 = ids.shape[1]
        for u, i in enumerate(heads):
            start = n1 - len(seqs[u])
            wrows.extend([u] * len(written[i]))
            wcols.extend(range(start, start + len(written[i])))
        ivs: list[Intervention] = []
        if wrows:
            assert values is not None
            pick = torch.tensor(sel)
            ivs = [_WriteTokens(torch.tensor(wrows), torch.tensor(wcols), [v[pick.to(v.device)] for v in values])]
        past = _kv_cache(model, kv, cidx)
        with (model.apply(ivs) if ivs else nullcontext()), torch.no_grad():
            out = model.hf_model(input_ids=ids.to(dev), attention_mask=torch.cat([past_mask, new_mask.to(dev)], 1),
                                 position_ids=pos.to(dev), use_cache=True, **{kw: past}, **last)
        cache: Any = output_cache(out)
        ext_kv = [(layer.keys, layer.values) for layer in cache.layers]
        ext_mask = torch.cat([past_mask, new_mask.to(dev)], 1)
    else:  # nothing to share: the rows read the context cache directly
        ext_kv = [(k[cidx], v[cidx]) for k, v in kv]
    unit_of = torch.zeros(len(chunk), dtype=torch.long)
    for u, rows in enumerate(units):
        unit_of[rows] = u
    seqs2, poss2 = [], []
    for i, p in enumerate(chunk):
        s = shared[int(unit_of[i])]
        seqs2.append(list(p.ids[p.context_len + s:]))
        poss2.append(list(range(p.context_len + s, len(p.ids))))
    ids2, pos2, mask2 = _left_pad(seqs2, poss2, pad)
    uidx = unit_of.to(dev)
    with torch.no_grad():
        logits = model.hf_model(input_ids=ids2.to(dev), attention_mask=torch.cat([ext_mask[uidx], mask2.to(dev)], 1),
                                position_ids=pos2.to(dev), use_cache=True, **{kw: _kv_cache(model, ext_kv, uidx)},
                                **last).logits[:, -1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(1, torch.tensor([list(c) for c in cands], device=logp.device)).cpu()


def _score_many_kv(model: HookedModel, prompts: Sequence[BindingPrompt], makes: dict[Any, MakeInterventions | None],
                   cands: list[Sequence[int]], batch_size: int, progress: bool, desc: str) -> dict[Any, torch.Tensor]:
    keys = [tuple(p.ids[:p.context_len]) for p in prompts]
    uniq: dict[tuple[int, ...], list[int]] = {}
    for i, key in enumerate(keys):
        uniq.setdefault(key, []).append(i)
    order = list(uniq)
    need_acts = any(m is not None for m in makes.values())
    out: dict[Any, torch.Tensor | None] = {k: None for k in makes}
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        group = order[s:s + batch_size]
        mask, kv, acts = _context_forward(model, group, need_acts)
        rows = sorted(i for key in group for i in uniq[key])
        local = {key: j for j, key in enumerate(group)}
        rmap = torch.tensor([local[keys[i]] for i in rows])
        chunk, cc = [prompts[i] for i in rows], [cands[i] for i in rows]
        frozen, row_acts = None, None
        if need_acts:
            row_acts = _rows_of(model, acts, rmap)
            frozen = FrozenContext(model, chunk, row_acts)
        clean = None
        for name, make in makes.items():
            if make is None:
                if clean is None:
                    clean = _question_logprobs(model, chunk, cc, mask, kv, rmap)
                res = clean
            else:
                assert frozen is not None and row_acts is not None
                ivs = as_interventions(make(rows, frozen))
                plan = _plan_writes(model, chunk, ivs, frozen, row_acts)
                res = candidate_logprobs(model, chunk, cc, ivs)[0] if plan is None else \
                    _question_logprobs(model, chunk, cc, mask, kv, rmap, *plan)
            if out[name] is None:
                out[name] = torch.zeros(len(prompts), res.shape[1])
            out[name][rows] = res  # type: ignore[index]
    return {k: v if v is not None else torch.zeros(0, 0) for k, v in out.items()}


def accuracy(logprobs: torch.Tensor, correct: Sequence[int]) -> float:
    """Fraction of rows whose argmax candidate is ``correct[row]``."""
    if logprobs.shape[0] == 0:
        return float("nan")
    return float((logprobs.argmax(1) == torch.as_tensor(list(correct))).float().mean())


def attribute_medians(logprobs: torch.Tensor, attributes: Sequence[Sequence[str]]) -> dict[str, float]:
    """Median log-prob of each attribute over calibration rows (queries about an absent name)."""
    values: dict[str, list[float]] = {}
    for row, names in zip(logprobs.tolist(), attributes):
        for v, name in zip(row, names):
            values.setdefault(name, []).append(v)
    return {k: float(np.median(v)) for k, v in values.items()}


def calibrated_accuracy(logprobs: torch.Tensor, attributes: Sequence[Sequence[str]], correct: Sequence[int],
                        medians: dict[str, float]) -> float:
    """Accuracy after subtracting each attribute's calibration median (Feng & Steinhardt's calibration).

    Attributes never seen in calibration fall back to the median of all calibration medians.
    """
    if not medians:
        raise InputError("Calibrated accuracy needs calibration medians (queries about absent names).")
    fallback = float(np.median(list(medians.values())))
    offset = torch.tensor([[medians.get(a, fallback) for a in names] for names in attributes])
    return accuracy(logprobs - offset, correct)
