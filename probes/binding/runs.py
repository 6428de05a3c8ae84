"""Scoring binding prompts: candidate log-probs per condition, by the full prompt or over a context KV cache.

Every experiment scores a prompt by the log-probabilities (full-vocabulary log-softmax at the last token) of
the answer tokens of its candidate attributes. Interventions are built per batch by a callback,
``make(rows, frozen)``, because their token spans differ per prompt (``rows``: the batch's indices into
the prompts; ``frozen``: the batch's :class:`FrozenContext`).

Two paths give the same numbers (up to float rounding):

- ``method="full"``: per batch one clean forward over the whole prompts (caching ``resid_pre`` of every layer
  when a condition needs the frozen context), then one full forward per intervened condition;
- ``method="kv"`` (default): each distinct context runs once and keeps its KV cache
  (:mod:`lmscope.probes.binding.contexts`); the clean scores run only the questions over it, and an
  intervened condition re-runs only the context tokens it rewrites plus the questions
  (:mod:`lmscope.probes.binding.kvpath`). Which tokens a condition rewrites is planned
  (:mod:`lmscope.probes.binding.planner`); a condition the planner cannot reproduce exactly runs the full
  path instead, alone, with a warning naming it and the reason. Models where reusing a prefix cache is not
  exact (ALiBi; sliding windows shorter than twice the longest prompt) run everything by the full path, also
  with a warning.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from lmscope.interventions.base import Intervention, Interventions, as_interventions
from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.inputs import pad as pad_ids
from lmscope.interventions.progress import bar_disable

from .contexts import ContextMemo, context_forward, kv_unsupported, pad_id, rows_of
from .frozen import FrozenContext
from .kvpath import question_logprobs
from .planner import PlanLayout, plan_writes
from .prompts import BindingPrompt

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

MakeInterventions = Callable[[Sequence[int], "FrozenContext | None"], list[Intervention]]
METHODS = ("kv", "full")


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
    batch = pad_ids([list(p.ids) for p in prompts], pad_id(model), "left")
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
          desc: str = "binding", method: str = "kv", memo: ContextMemo | None = None) -> torch.Tensor:
    """Candidate log-probs ``[n, k]`` of all ``prompts`` under the interventions ``make(rows, frozen)`` builds
    (``rows`` = the batch's indices into ``prompts``); see :func:`score_many`."""
    return score_many(model, prompts, {"x": make}, candidates=candidates, batch_size=batch_size,
                      progress=progress, desc=desc, method=method, memo=memo)["x"]


def score_many(model: HookedModel, prompts: Sequence[BindingPrompt], makes: dict[Any, MakeInterventions | None], *,
               candidates: Sequence[Sequence[int]] | None = None, batch_size: int = 16, progress: bool = True,
               desc: str = "binding", method: str = "kv", memo: ContextMemo | None = None) -> dict[Any, torch.Tensor]:
    """Candidate log-probs ``[n, k]`` per condition (``makes[name]`` builds its interventions; None = clean).

    ``method``: ``"kv"`` (default) or ``"full"``, the same numbers up to float rounding (see the module
    docstring). Under ``"kv"`` a condition the KV path cannot reproduce exactly (its interventions read the
    question tokens or the batch, write outside the context or at another site, read activations, or do not
    start with ``frozen.patch``) runs by the full path, with a ``UserWarning`` naming it and the reason (one
    per condition per call). ``batch_size`` counts prompts on the full path and distinct contexts (each
    with all of its prompts) on the KV path; pass the queries of every slot of a context in one call to share
    its work. ``memo``: a :class:`ContextMemo` shared with other calls over the same contexts.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
    cands: list[Sequence[int]] = [p.candidates for p in prompts] if candidates is None else list(candidates)
    if len({len(c) for c in cands}) > 1:
        raise InputError("Every prompt must have the same number of candidates.")
    if method == "full" or not prompts:
        return _score_full(model, prompts, makes, cands, batch_size, progress, desc)
    why = kv_unsupported(model, prompts)
    if why is not None:
        warnings.warn(f"score_many runs every condition by the full prompts (method='full'): the KV path is not "
                      f"exact on this model: {why}", stacklevel=2)
        return _score_full(model, prompts, makes, cands, batch_size, progress, desc)
    out, fallback = _score_kv(model, prompts, makes, cands, batch_size, progress, desc, memo)
    for name, reason in fallback.items():
        warnings.warn(f"score_many: condition {name!r} runs by the full prompts (method='full'), not over the "
                      f"context KV cache: {reason}.", stacklevel=2)
    if fallback:
        out.update(_score_full(model, prompts, {k: makes[k] for k in fallback}, cands, batch_size, progress, desc))
    return out


def _score_full(model: HookedModel, prompts: Sequence[BindingPrompt], makes: dict[Any, MakeInterventions | None],
                cands: list[Sequence[int]], batch_size: int, progress: bool, desc: str) -> dict[Any, torch.Tensor]:
    """The full path: per batch of prompts a clean forward (caching ``resid_pre`` for the frozen context when
    a condition has interventions), then one forward per intervened condition."""
    need_cache = any(m is not None for m in makes.values())
    out: dict[Any, list[torch.Tensor]] = {k: [] for k in makes}
    for s in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=bar_disable(progress), leave=False):
        chunk, cc = list(prompts[s:s + batch_size]), cands[s:s + batch_size]
        clean, act = candidate_logprobs(model, chunk, cc, cache=need_cache)
        frozen = FrozenContext(model, chunk, act) if need_cache else None
        for name, make in makes.items():
            out[name].append(clean if make is None else
                             candidate_logprobs(model, chunk, cc, make(range(s, s + len(chunk)), frozen))[0])
    return {k: torch.cat(v) if v else torch.zeros(0, 0) for k, v in out.items()}


def _score_kv(model: HookedModel, prompts: Sequence[BindingPrompt], makes: dict[Any, MakeInterventions | None],
              cands: list[Sequence[int]], batch_size: int, progress: bool, desc: str,
              memo: ContextMemo | None) -> tuple[dict[Any, torch.Tensor], dict[Any, str]]:
    """The KV path over batches of ``batch_size`` distinct contexts: the scores of every condition it can
    reproduce, and the reason for each one it cannot (those rows are left at zero)."""
    keys = [tuple(p.ids[:p.context_len]) for p in prompts]
    uniq: dict[tuple[int, ...], list[int]] = {}
    for i, key in enumerate(keys):
        uniq.setdefault(key, []).append(i)
    order = list(uniq)
    need_acts = any(m is not None for m in makes.values())
    out = {k: torch.zeros(len(prompts), len(cands[0])) for k in makes}
    fallback: dict[Any, str] = {}
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=bar_disable(progress), leave=False):
        group = order[s:s + batch_size]
        local = {key: j for j, key in enumerate(group)}
        rows = sorted(i for key in group for i in uniq[key])
        rmap = torch.tensor([local[keys[i]] for i in rows])
        run = context_forward(model, group, need_acts, memo)
        chunk, cc = [prompts[i] for i in rows], [cands[i] for i in rows]
        frozen, layout, clean = None, None, None
        if need_acts:
            assert run.acts is not None
            row_acts = rows_of(model, run.acts, rmap)
            frozen, layout = FrozenContext(model, chunk, row_acts), PlanLayout(model, chunk, row_acts)
        for name, make in makes.items():
            if name in fallback:
                continue
            if make is None:
                clean = question_logprobs(model, chunk, cc, run, rmap) if clean is None else clean
                out[name][rows] = clean
                continue
            assert frozen is not None and layout is not None
            plan = plan_writes(model, as_interventions(make(rows, frozen)), frozen, layout)
            if isinstance(plan, str):
                fallback[name] = plan
                continue
            out[name][rows] = question_logprobs(model, chunk, cc, run, rmap, plan)
    return out, fallback
