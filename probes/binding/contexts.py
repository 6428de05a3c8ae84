"""Context forwards of the KV path: each batch of distinct contexts runs once and keeps its KV cache.

:func:`context_forward` runs left-padded contexts with ``use_cache=True`` and returns their attention mask,
per-layer keys and values, and (on request) the clean ``resid_pre`` of every layer. A :class:`ContextMemo`
passed to several scoring calls over the same contexts (calibration queries, then the queries of every slot)
makes them share those forwards; it is an explicit object, so concurrent callers never share one by accident.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.cache import ActivationCache, Cache, session_cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.inputs import pad as pad_ids
from lmscope.interventions.kv import cache_kwarg, output_cache
from lmscope.interventions.partial import partial_forward_unsupported

from .prompts import BindingPrompt

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

ContextKey = tuple[tuple[int, ...], ...]


@dataclass
class ContextRun:
    """One forward over left-padded contexts: ``mask`` ``[contexts, width]``, per-layer ``(K, V)``, and the
    clean ``resid_pre`` of every layer (``acts``; None unless it was asked for)."""

    mask: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    acts: ActivationCache | None


class ContextMemo:
    """Context forwards of one model, by the token ids of the contexts in each batch.

    Pass one memo to several scoring calls (``score``/``score_many``/``context_acts`` with ``memo=``) over
    the same contexts, batched alike, and each batch of contexts runs once. ``acts=True`` records the clean
    ``resid_pre`` of every layer on the first forward (a later call that freezes the context needs it). The
    memo holds every batch's KV cache: drop it when the calls are done.
    """

    def __init__(self, model: HookedModel, acts: bool = False) -> None:
        self.model, self.acts = model, acts
        self._runs: dict[ContextKey, ContextRun] = {}

    def get(self, model: HookedModel, key: ContextKey, acts: bool) -> ContextRun | None:
        """The stored run of ``key`` (None when missing, or when ``acts`` are needed and it has none)."""
        if model is not self.model:
            raise InputError("This ContextMemo holds another model's context forwards; make one per model.")
        run = self._runs.get(key)
        return None if run is None or (acts and run.acts is None) else run

    def put(self, key: ContextKey, run: ContextRun) -> None:
        self._runs[key] = run


def pad_id(model: HookedModel) -> int:
    """The tokenizer's padding id (0 without one)."""
    pad = model.tokenizer.pad_token_id if model.tokenizer is not None else None
    return int(pad) if pad is not None else 0


def forward_kwargs(model: HookedModel) -> tuple[str, bool]:
    """The forward's cache keyword, and whether it takes ``logits_to_keep`` (then only the last logits run)."""
    return cache_kwarg(model), "logits_to_keep" in inspect.signature(model.hf_model.forward).parameters


def kv_unsupported(model: HookedModel, prompts: Sequence[BindingPrompt]) -> str | None:
    """Why the KV path is not exact for ``prompts`` on ``model`` (None when it is).

    A sliding window is harmless when no forward spans it: the KV path's forwards hold at most a context
    plus its rewritten tokens plus a question (under twice the longest prompt), so a window longer than that
    masks nothing (Gemma 2/3's 512+ windows and binding prompts of ~60 tokens).
    """
    longest = max(len(p.ids) for p in prompts)
    return partial_forward_unsupported(model, 2 * longest + 1)


def context_forward(model: HookedModel, contexts: list[tuple[int, ...]], acts: bool,
                    memo: ContextMemo | None = None) -> ContextRun:
    """Run the (left-padded) contexts once, or take the run from ``memo``; ``acts`` records ``resid_pre``."""
    key = tuple(contexts)
    if memo is not None:
        hit = memo.get(model, key, acts)
        if hit is not None:
            return hit
        acts = acts or memo.acts
    batch = pad_ids([list(c) for c in contexts], pad_id(model), "left")
    ids, mask = batch.input_ids.to(model.device), batch.attention_mask.to(model.device)
    _, keep = forward_kwargs(model)
    with model.apply([Cache("resid_pre.*")] if acts else []) as session, torch.no_grad():
        out = model.hf_model(input_ids=ids, attention_mask=mask, position_ids=batch.position_ids.to(model.device),
                             use_cache=True, **({"logits_to_keep": 1} if keep else {}))
    cache: Any = output_cache(out)
    run = ContextRun(mask, [(layer.keys, layer.values) for layer in cache.layers],
                     session_cache(model, session, mask) if acts else None)
    if memo is not None:
        memo.put(key, run)
    return run


def context_acts(model: HookedModel, prompts: Sequence[BindingPrompt],
                 memo: ContextMemo | None = None) -> ActivationCache:
    """Clean ``resid_pre`` of every layer over the prompts' contexts (one forward, no logits but the last)."""
    acts = context_forward(model, [tuple(p.ids[:p.context_len]) for p in prompts], True, memo).acts
    assert acts is not None
    return acts


def rows_of(model: HookedModel, acts: ActivationCache, rmap: torch.Tensor) -> ActivationCache:
    """The activations of context ``rmap[i]`` as row ``i`` (several prompts may share one context)."""
    mask = acts.attention_mask
    assert mask is not None  # context forwards always record their mask
    idx = rmap.to(mask.device)
    return ActivationCache(model, {model.resolve(name)[0]: acts[name][idx.to(acts[name].device)] for name in acts},
                           mask[idx])
