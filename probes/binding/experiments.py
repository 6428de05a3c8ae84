"""Baseline accuracy, the factorization test and position independence (Feng & Steinhardt §3-4)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.errors import InputError
from lmscope.interventions.numbers import float32_clean_all
from lmscope.interventions.patch import Patch
from lmscope.interventions.progress import bar_disable

from .contexts import ContextMemo, context_acts
from .frozen import FrozenContext
from .metrics import accuracy, attribute_medians, calibrated_accuracy
from .prompts import BindingPrompt, Context, absent_entity, answer_token, build_prompt, sample_contexts, span_positions
from .runs import candidate_logprobs, score, score_many
from .tasks import BindingTask

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

SWAPS = ("none", "entity", "attribute", "both")


def calibration(model: HookedModel, task: BindingTask, contexts: Sequence[Context], split: str, *,
                batch_size: int = 16, progress: bool = True, method: str = "kv",
                memo: ContextMemo | None = None) -> dict[str, float]:
    """Each attribute's median log-prob when the query names someone absent from the context (``memo``: see
    :class:`ContextMemo`)."""
    lp = score(model, _calibration_prompts(model, task, contexts, split), batch_size=batch_size, progress=progress,
               desc="calibration", method=method, memo=memo)
    return attribute_medians(lp, [c.attributes for c in contexts])


def _calibration_prompts(model: HookedModel, task: BindingTask, contexts: Sequence[Context],
                         split: str) -> list[BindingPrompt]:
    """One query per context about a name absent from it (seeded by the context's index)."""
    return [build_prompt(model.tokenizer, task, c, absent_entity(task, c, split, seed=i), allow_absent=True)
            for i, c in enumerate(contexts)]


def baseline(model: HookedModel, task: BindingTask, n_samples: int = 64, *, split: str = "test", seed: int = 0,
             batch_size: int = 16, progress: bool = True, method: str = "kv") -> dict[str, Any]:
    """Accuracy and mean log-prob of the right attribute per queried slot, raw and calibrated.

    ``method``: see :func:`score_many` (with ``"kv"`` the calibration and slot queries share each context's
    forward)."""
    contexts = sample_contexts(model.tokenizer, task, n_samples, split=split, seed=seed, spare_entity=True)
    n, m = len(contexts[0].entities), len(contexts)
    # calibration and every slot in one call: the KV path runs each context and the question prefix the
    # queries share once (the full path scores the same prompts one by one)
    prompts = _calibration_prompts(model, task, contexts, split) + \
        [build_prompt(model.tokenizer, task, c, q) for q in range(n) for c in contexts]
    scores = score(model, prompts, batch_size=batch_size, progress=progress, desc="baseline", method=method)
    medians = attribute_medians(scores[:m], [c.attributes for c in contexts])
    out: dict[str, Any] = {"task": task.name, "n_samples": n_samples, "split": split, "per_slot": []}
    for q in range(n):
        lp = scores[m * (q + 1):m * (q + 2)]
        out["per_slot"].append({"slot": q, "accuracy": accuracy(lp, [q] * m),
                                "calibrated_accuracy": calibrated_accuracy(lp, [c.attributes for c in contexts],
                                                                           [q] * m, medians),
                                "mean_logprob": float(lp[:, q].mean())})
    out["accuracy"] = sum(s["accuracy"] for s in out["per_slot"]) / n
    out["calibrated_accuracy"] = sum(s["calibrated_accuracy"] for s in out["per_slot"]) / n
    out["chance"] = 1.0 / n
    return float32_clean_all(out)


def _source_for(model: HookedModel, task: BindingTask, target: BindingPrompt, split: str, rng: random.Random,
                side: int, tries: int = 200) -> Context:
    """A source context with new names and attributes whose slot-``side`` spans have the target's token lengths
    (the swapped spans pair token for token)."""
    tok = model.tokenizer
    ents = [e for e in task.pool("entities", split) if e not in target.context.entities]
    taken = set(target.candidates)
    attrs = [a for a in task.pool("attributes", split) if answer_token(tok, task, a) not in taken]
    n = len(target.context.entities)
    if len(ents) < n or len(attrs) < n:
        raise InputError(f"Task {task.name!r} split {split!r} is too small for a factorization test: it needs "
                         f"{2 * n} entities and {2 * n} attributes with distinct answer tokens.")
    for _ in range(tries):
        src = Context(tuple(rng.sample(ents, n)), tuple(rng.sample(attrs, n)))
        p = build_prompt(tok, task, src, None)
        same = [x[side][1] - x[side][0] == y[side][1] - y[side][0]
                for x, y in ((p.entity_spans, target.entity_spans), (p.attribute_spans, target.attribute_spans))]
        if (all(same) and len({answer_token(tok, task, a) for a in src.attributes} | taken) == 2 * n):
            return src
    raise InputError(f"No source context of task {task.name!r} matches the target's span lengths "
                     f"({target.context}); the pools need more names of equal token length.")


def swap_patch(target: Sequence[BindingPrompt], source: Sequence[BindingPrompt], source_cache: object,
               what: str, slots: Sequence[int], layers: str = "resid_pre.*") -> Patch:
    """A ``Patch`` that writes the source's entity and/or attribute activations of ``slots`` into the target's
    (one source row per target row; spans pair token for token)."""
    if what not in SWAPS[1:]:
        raise InputError(f"swap must be one of {', '.join(SWAPS[1:])}; got {what!r}.")
    pos, spos = [], []
    for t, s in zip(target, source):
        pick = lambda p: ([p.entity_spans[k] for k in slots] if what in ("entity", "both") else []) + \
                         ([p.attribute_spans[k] for k in slots] if what in ("attribute", "both") else [])
        pos.append(span_positions(pick(t)))
        spos.append(span_positions(pick(s)))
    return Patch(layers, source_cache, positions=pos, source_positions=spos)


def predicted_binding(what: str, side: int, n: int = 2) -> dict[int, int]:
    """Binding-ID prediction: query role -> attribute role (roles 0..n-1 target, n..2n-1 source)."""
    pred = {}
    for j in range(n):
        e = n + j if (j == side and what in ("entity", "both")) else j
        a = n + j if (j == side and what in ("attribute", "both")) else j
        pred[e] = a
    return pred


def factorization(model: HookedModel, task: BindingTask, n_samples: int = 32, *, side: int = 0,
                  split: str = "test", seed: int = 0, batch_size: int = 16, progress: bool = True,
                  method: str = "kv") -> dict[str, Any]:
    """Swap slot ``side``'s entity/attribute/both activations from a source context at ``resid_pre`` of every
    layer (context frozen, question recomputed); query every name; mean log-prob table per condition."""
    n = task.slots()
    if not 0 <= side < n:
        raise InputError(f"side must be a slot index in 0..{n - 1}, got {side}.")
    targets, sources = _factorization_pairs(model, task, n_samples, side, split, seed)
    rows_t, rows_s = [], []
    for t, src in zip(targets, sources):
        for name in list(t.context.entities) + list(src.entities):
            rows_t.append(build_prompt(model.tokenizer, task, t.context, name, allow_absent=True))
            rows_s.append(build_prompt(model.tokenizer, task, src, name, allow_absent=True))
    cands = [t.candidates + s.candidates for t, s in zip(rows_t, rows_s)]
    scores = score_many(model, rows_t, _swap_makers(model, rows_t, rows_s, cands, side, method), candidates=cands,
                        batch_size=batch_size, progress=progress, desc="factorization", method=method)
    tables, accs = {}, {}
    for what, lp in scores.items():
        per = lp.reshape(len(targets), 2 * n, 2 * n)
        hits = per.argmax(-1)
        tables[what] = per.mean(0).tolist()
        accs[what] = float(torch.stack([(hits[:, e] == a).float()
                                        for e, a in predicted_binding(what, side, n).items()]).mean())
    return float32_clean_all({
        "task": task.name, "n_samples": n_samples, "side": side, "roles": [f"E{i}" for i in range(2 * n)],
        "attribute_roles": [f"A{i}" for i in range(2 * n)], "mean_logprob": tables,
        "prediction": {w: {f"E{e}": f"A{a}" for e, a in predicted_binding(w, side, n).items()} for w in SWAPS},
        "prediction_accuracy": accs, "chance": 1.0 / (2 * n)})


def _factorization_pairs(model: HookedModel, task: BindingTask, n_samples: int, side: int, split: str,
                         seed: int) -> tuple[list[BindingPrompt], list[Context]]:
    """``n_samples`` target prompts (context only) and, for each, a source context whose slot-``side`` spans
    have the target's token lengths; a target without one is skipped."""
    tok, rng = model.tokenizer, random.Random(seed + 1)
    targets, sources = [], []
    for c in sample_contexts(tok, task, 4 * n_samples, split=split, seed=seed):
        target = build_prompt(tok, task, c, None)
        try:  # a target whose swapped name has a unique token length has no source: draw another
            sources.append(_source_for(model, task, target, split, rng, side))
        except InputError:
            continue
        targets.append(target)
        if len(targets) == n_samples:
            break
    if len(targets) < n_samples:
        raise InputError(f"Only {len(targets)} of {n_samples} contexts of task {task.name!r} have a source "
                         "context with swapped spans of equal token length; the pools need more names of equal "
                         "length.")
    return targets, sources


def _swap_makers(model: HookedModel, rows_t: list[BindingPrompt], rows_s: list[BindingPrompt],
                 cands: list[tuple[int, ...]], side: int, method: str) -> dict[str, Any]:
    """The factorization conditions: none, and the frozen context plus one swap patch per kind; the source
    prompts of a batch run once, shared by its three swaps."""
    source_runs: dict[tuple[int, ...], Any] = {}

    def source_cache(rows: Sequence[int]) -> Any:
        key = tuple(rows)
        if key not in source_runs:
            source_runs.clear()
            src = [rows_s[i] for i in rows]
            source_runs[key] = (context_acts(model, src) if method == "kv" else
                                candidate_logprobs(model, src, [cands[i] for i in rows], cache=True)[1])
        return source_runs[key]

    def maker(what: str) -> Any:
        def make(rows: Sequence[int], frozen: FrozenContext | None) -> list:
            assert frozen is not None
            src = [rows_s[i] for i in rows]
            return [frozen.patch, swap_patch([rows_t[i] for i in rows], src, source_cache(rows), what, [side])]
        return make

    return {"none": None, **{w: maker(w) for w in SWAPS[1:]}}  # freezing alone changes nothing (tested)


def position_shift(model: HookedModel, task: BindingTask, n_samples: int = 32, *, what: str = "entity",
                   fractions: Sequence[float] = (-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5), split: str = "test",
                   seed: int = 0, batch_size: int = 16, progress: bool = True, keys_only: bool = False,
                   ) -> dict[str, Any]:
    """Move slot 0's and slot 1's entity (or attribute) spans towards each other through ``position_ids``.

    At fraction ``f`` slot 0's tokens get positions ``+ round(f * gap)`` and slot 1's ``- round(f * gap)``
    (``gap`` = distance between their first tokens): at 0.5 they meet, at 1.0 they have exchanged positions.
    Binding IDs predict the answer barely changes. By default the moved tokens' own queries move too (the
    model sees them at the new position); ``keys_only=True`` is the authors' variant: only the moved tokens'
    keys are re-rotated to the new positions, every query keeps its own
    (:func:`lmscope.probes.binding.keyshift.key_position_shift`; RoPE models). The causal order is kept.
    """
    if what not in ("entity", "attribute"):
        raise InputError(f"what must be 'entity' or 'attribute', got {what!r}.")
    tok = model.tokenizer
    contexts = sample_contexts(tok, task, n_samples, split=split, seed=seed)
    if len(contexts[0].entities) != 2:
        raise InputError("position_shift works on two-entity contexts.")
    prompts = [build_prompt(tok, task, c, q) for c in contexts for q in (0, 1)]
    curves: dict[str, list[float]] = {"accuracy": [], "logprob_right": [], "logprob_other": []}
    for f in fractions:
        positions = []
        for p in prompts:
            spans = p.entity_spans if what == "entity" else p.attribute_spans
            delta = round(f * (spans[1][0] - spans[0][0]))
            pos = list(range(len(p.ids)))
            for (a, b), sign in zip(spans, (1, -1)):
                for t in range(a, b):
                    pos[t] += sign * delta
            if min(pos) < 0:
                raise InputError(f"Fraction {f} moves a token before position 0; use a smaller shift.")
            positions.append(pos)
        lp = _score_positions(model, prompts, positions, batch_size, progress, f, keys_only)
        right = torch.tensor([p.query_slot for p in prompts])
        curves["accuracy"].append(accuracy(lp, right.tolist()))
        curves["logprob_right"].append(float(lp.gather(1, right[:, None]).mean()))
        curves["logprob_other"].append(float(lp.gather(1, 1 - right[:, None]).mean()))
    return {"task": task.name, "what": what, "n_samples": n_samples, "fractions": list(fractions),
            **float32_clean_all(curves), "method": ("keys re-rotated (queries unchanged)" if keys_only
                                                    else "position_ids (tokens moved; keys and queries re-rotated)")}


def _score_positions(model: HookedModel, prompts: list[BindingPrompt], positions: list[list[int]], batch_size: int,
                     progress: bool, f: float, keys_only: bool = False) -> torch.Tensor:
    from tqdm.auto import tqdm

    from .keyshift import key_position_shift

    out = []
    for s in tqdm(range(0, len(prompts), batch_size), desc=f"shift {f:+.2f}", disable=bar_disable(progress),
                  leave=False):
        chunk = prompts[s:s + batch_size]
        if not keys_only:
            out.append(candidate_logprobs(model, chunk, [p.candidates for p in chunk],
                                          token_positions=positions[s:s + batch_size])[0])
            continue
        width = max(len(p.ids) for p in chunk)
        shifts = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, pos in enumerate(positions[s:s + batch_size]):  # left padding, as candidate_logprobs pads
            shifts[i, width - len(pos):] = torch.as_tensor(pos) - torch.arange(len(pos))
        with key_position_shift(model, shifts):
            out.append(candidate_logprobs(model, chunk, [p.candidates for p in chunk])[0])
    return torch.cat(out)
