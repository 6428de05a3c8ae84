"""The KV engine: candidate log-probs of prompts over their contexts' KV cache, in two forwards.

1. :func:`extend_units`, once per *unit* (rows with the same context and the same rewrites, see
   :func:`units`): its rewritten context tokens (``resid_pre`` of every layer overwritten with the planned
   values, original position ids, their stale cache columns masked out) plus the question prefix its rows
   share (e.g. "Question: Which city does" before the queried name), appended to the context's cache.
2. :func:`run_suffixes`, per row: the rest of its question over its unit's extended cache; logits of the
   last token only.

Every token sees exactly the keys and values it would see in one forward over the whole prompt, so the result
equals the full prompt up to float rounding; the shared prefix and the rewritten tokens run once per context
instead of once per queried slot.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.base import Intervention
from lmscope.interventions.kv import build_cache, output_cache
from lmscope.interventions.positions import ForwardContext
from lmscope.interventions.sites import Site

from .contexts import ContextRun, forward_kwargs, pad_id
from .planner import WritePlan
from .prompts import BindingPrompt

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

KV = list[tuple[torch.Tensor, torch.Tensor]]


class WriteTokens(Intervention):
    """Internal: overwrite ``resid_pre`` of every layer at the given (row, column) cells of the forward."""

    internal = True  # built and run only inside the KV path: never registered for loading, never saved

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, values: list[torch.Tensor]) -> None:
        super().__init__("resid_pre.*")
        self.rows, self.cols, self.values = rows, cols, values

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        assert site.layer is not None
        out = value.clone()
        out[self.rows.to(value.device), self.cols.to(value.device)] = \
            self.values[site.layer].to(device=value.device, dtype=value.dtype)
        return out


def kv_cache(model: HookedModel, kv: KV, idx: torch.Tensor) -> Any:
    """A fresh ``DynamicCache`` holding rows ``idx`` of the per-layer ``(K, V)`` list."""
    return build_cache(model, [(k[idx], v[idx]) for k, v in kv])


def left_pad(seqs: list[list[int]], poss: list[list[int]], pad: int) -> tuple[torch.Tensor, ...]:
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


@dataclass
class Units:
    """Rows that share one run of their rewritten tokens and common question prefix: ``rows[u]`` are unit
    ``u``'s rows, ``shared[u]`` the length of the question prefix they all share (each row keeps at least its
    last token), ``of_row[i]`` the unit of row ``i``."""

    rows: list[list[int]]
    shared: list[int]
    of_row: torch.Tensor


def _offsets(written: list[list[int]]) -> list[int]:
    """Where each row's cells start in a plan's row-major values (and the total at the end)."""
    out = [0]
    for w in written:
        out.append(out[-1] + len(w))
    return out


def units(chunk: list[BindingPrompt], rmap: torch.Tensor, plan: WritePlan | None) -> Units:
    """Group rows into :class:`Units`: same context (``rmap``), same rewritten tokens with the same intended
    values at every layer."""
    written = plan.written if plan is not None else [[] for _ in chunk]
    offsets = _offsets(written)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, w in enumerate(written):
        key: tuple[Any, ...] = (int(rmap[i]), tuple(w))
        first = groups.get(key, [None])[0]
        if first is not None and w and plan is not None and not all(
                torch.equal(v[offsets[first]:offsets[first + 1]], v[offsets[i]:offsets[i + 1]]) for v in plan.values):
            key = (*key, i)  # same tokens, other values: its own unit
        groups.setdefault(key, []).append(i)
    rows = list(groups.values())
    shared = []
    for members in rows:
        qs = [chunk[i].ids[chunk[i].context_len:] for i in members]
        limit = min(len(q) for q in qs) - 1
        k = 0
        while k < limit and all(q[k] == qs[0][k] for q in qs):
            k += 1
        shared.append(k)
    of_row = torch.zeros(len(chunk), dtype=torch.long)
    for u, members in enumerate(rows):
        of_row[members] = u
    return Units(rows, shared, of_row)


def _unit_inputs(chunk: list[BindingPrompt], run: ContextRun, cidx: torch.Tensor, u: Units,
                 plan: WritePlan | None) -> tuple[list[list[int]], list[list[int]], torch.Tensor, list[int]]:
    """Per unit, the tokens to append (rewritten context tokens, then the shared question prefix) and their
    position ids; the context mask with the rewritten tokens' stale columns masked out; which planned cells
    (row-major indices into the plan's values) the units rewrite, in order."""
    written = plan.written if plan is not None else [[] for _ in chunk]
    offsets = _offsets(written)
    past_mask = run.mask[cidx].clone()
    seqs: list[list[int]] = []
    poss: list[list[int]] = []
    sel: list[int] = []
    for k, members in enumerate(u.rows):
        i, s = members[0], u.shared[k]
        p, w = chunk[i], written[i]
        seqs.append([p.ids[t] for t in w] + list(p.ids[p.context_len:p.context_len + s]))
        poss.append(list(w) + list(range(p.context_len, p.context_len + s)))
        pad_c = run.mask.shape[1] - int(run.mask[cidx[k]].sum())
        for t in w:
            past_mask[k, pad_c + t] = 0
        sel.extend(range(offsets[i], offsets[i + 1]))
    return seqs, poss, past_mask, sel


def extend_units(model: HookedModel, chunk: list[BindingPrompt], run: ContextRun, rmap: torch.Tensor, u: Units,
                 plan: WritePlan | None) -> tuple[KV, torch.Tensor]:
    """Step 1: each unit's context cache extended by its rewritten tokens and shared question prefix (one
    forward for all units); returns per-layer ``(K, V)`` and the attention mask, one row per unit."""
    dev = model.device
    cidx = rmap[[members[0] for members in u.rows]].to(dev)
    seqs, poss, past_mask, sel = _unit_inputs(chunk, run, cidx, u, plan)
    if not any(seqs):  # nothing to share: the rows read the context cache directly
        return [(k[cidx], v[cidx]) for k, v in run.kv], past_mask
    ids, pos, new_mask = left_pad(seqs, poss, pad_id(model))
    wrows: list[int] = []
    wcols: list[int] = []
    for k, members in enumerate(u.rows):
        n_w = len(plan.written[members[0]]) if plan is not None else 0
        start = ids.shape[1] - len(seqs[k])
        wrows.extend([k] * n_w)
        wcols.extend(range(start, start + n_w))
    ivs: list[Intervention] = []
    if wrows:
        assert plan is not None
        pick = torch.tensor(sel)
        ivs = [WriteTokens(torch.tensor(wrows), torch.tensor(wcols), [v[pick.to(v.device)] for v in plan.values])]
    kw, keep = forward_kwargs(model)
    mask = torch.cat([past_mask, new_mask.to(dev)], 1)
    with (model.apply(ivs) if ivs else nullcontext()), torch.no_grad():
        out = model.hf_model(input_ids=ids.to(dev), attention_mask=mask, position_ids=pos.to(dev), use_cache=True,
                             **{kw: kv_cache(model, run.kv, cidx)}, **({"logits_to_keep": 1} if keep else {}))
    cache: Any = output_cache(out)
    return [(layer.keys, layer.values) for layer in cache.layers], mask


def run_suffixes(model: HookedModel, chunk: list[BindingPrompt], cands: list[Sequence[int]], kv: KV,
                 mask: torch.Tensor, u: Units) -> torch.Tensor:
    """Step 2: each row's question after its unit's shared prefix, over the unit's extended cache; the
    log-probs ``[rows, k]`` of its candidates at the last token."""
    dev = model.device
    seqs, poss = [], []
    for i, p in enumerate(chunk):
        start = p.context_len + u.shared[int(u.of_row[i])]
        seqs.append(list(p.ids[start:]))
        poss.append(list(range(start, len(p.ids))))
    ids, pos, new_mask = left_pad(seqs, poss, pad_id(model))
    uidx = u.of_row.to(dev)
    kw, keep = forward_kwargs(model)
    with torch.no_grad():
        logits = model.hf_model(input_ids=ids.to(dev), attention_mask=torch.cat([mask[uidx], new_mask.to(dev)], 1),
                                position_ids=pos.to(dev), use_cache=True, **{kw: kv_cache(model, kv, uidx)},
                                **({"logits_to_keep": 1} if keep else {})).logits[:, -1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(1, torch.tensor([list(c) for c in cands], device=logp.device)).cpu()


def question_logprobs(model: HookedModel, chunk: list[BindingPrompt], cands: list[Sequence[int]], run: ContextRun,
                      rmap: torch.Tensor, plan: WritePlan | None = None) -> torch.Tensor:
    """Candidate log-probs ``[rows, k]`` of ``chunk`` over context ``rmap[i]`` of ``run``, with ``plan``'s
    context cells rewritten (None: the clean context); see the module docstring."""
    u = units(chunk, rmap, plan)
    kv, mask = extend_units(model, chunk, run, rmap, u, plan)
    return run_suffixes(model, chunk, cands, kv, mask, u)
