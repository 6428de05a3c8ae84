"""Mean interventions: Δ_E and Δ_A per layer and token, the Table-1 swaps, transfer and the ID subspace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from lmscope.interventions.errors import InputError
from lmscope.interventions.numbers import float32_clean_all
from lmscope.interventions.progress import bar_disable

from .contexts import ContextMemo, context_acts
from .experiments import calibration
from .frozen import FrozenContext
from .metrics import accuracy, calibrated_accuracy
from .prompts import BindingPrompt, build_prompt, sample_contexts
from .runs import candidate_logprobs, score_many
from .shift import BindingShift, random_like
from .tasks import BindingTask

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

ROWS = ("none", "swap_attributes", "swap_entities", "swap_both", "random_both")


@dataclass
class BindingDeltas:
    """``entity[k]``/``attribute[k]``: Δ(k+1) as ``[n_layers, span_tokens, d_model]`` (slot k+1 minus slot 0)."""

    task: str
    entity: list[torch.Tensor]
    attribute: list[torch.Tensor]
    n_samples: int

    def shift(self, which: str, k: int, plus: list, minus: list | None, scale: float = 1.0) -> BindingShift:
        delta = (self.entity if which == "entity" else self.attribute)[k - 1]
        return BindingShift(delta, range(delta.shape[0]), plus, minus, scale=scale)


def _accumulate(acc: dict, key: tuple, values: torch.Tensor) -> None:
    """Add ``values [layers, tokens, d]`` into running per-token-offset sums and counts."""
    sums, counts = acc.get(key, (values.new_zeros(values.shape[0], 0, values.shape[2]), values.new_zeros(0)))
    t = values.shape[1]
    if sums.shape[1] < t:
        grow = t - sums.shape[1]
        sums = torch.cat([sums, sums.new_zeros(sums.shape[0], grow, sums.shape[2])], 1)
        counts = torch.cat([counts, counts.new_zeros(grow)])
    sums[:, :t] += values
    counts[:t] += 1
    acc[key] = (sums, counts)


def estimate_deltas(model: HookedModel, task: BindingTask, n_samples: int = 128, *, n_entities: int = 2,
                    split: str = "train", seed: int = 0, batch_size: int = 16, progress: bool = True,
                    method: str = "kv") -> BindingDeltas:
    """Δ(k) = mean over samples of act(item in slot k) − act(same item in slot 0), at ``resid_pre`` of every
    layer and each token of the item's span; slot 0 comes from the cyclically shifted context.
    ``method="kv"`` skips the logits of all but the last token (``"full"``: full-prompt runs)."""
    tok = model.tokenizer
    contexts = sample_contexts(tok, task, n_samples, split=split, n_entities=n_entities, seed=seed)
    acc: dict = {}
    for s in tqdm(range(0, len(contexts), batch_size), desc="deltas", disable=bar_disable(progress), leave=False):
        chunk = contexts[s:s + batch_size]
        base = [build_prompt(tok, task, c, None) for c in chunk]
        acts = _span_acts(model, base, method)
        for k in range(1, n_entities):
            rolled = _span_acts(model, [build_prompt(tok, task, c.rolled(k), None) for c in chunk], method)
            for i in range(len(chunk)):
                for which in ("E", "A"):
                    a, b = acts[i][which][k], rolled[i][which][0]
                    if a.shape == b.shape:  # same item, same tokens (true unless context changes tokenization)
                        _accumulate(acc, (which, k), a - b)
    if not acc:
        raise InputError("No Δ sample could be paired; check the task's tokenization.")
    mean = lambda key: acc[key][0] / acc[key][1][None, :, None]
    return BindingDeltas(task.name, [mean(("E", k)) for k in range(1, n_entities)],
                         [mean(("A", k)) for k in range(1, n_entities)], n_samples)


def _span_acts(model: HookedModel, prompts: list[BindingPrompt],
               method: str = "kv") -> list[dict[str, list[torch.Tensor]]]:
    """Per prompt: ``resid_pre`` of all layers ``[layers, span, d]`` for each entity (``"E"``) and attribute span."""
    if method == "kv" and all(p.context_len == len(p.ids) for p in prompts):
        cache: Any = context_acts(model, prompts)
    else:
        _, cache = candidate_logprobs(model, prompts, [p.candidates for p in prompts], cache=True)
    stack = torch.stack([_unpadded(cache, layer) for layer in range(model.n_layers)], 0)
    out = []
    for i, p in enumerate(prompts):
        out.append({"E": [stack[:, i, a:b].float() for a, b in p.entity_spans],
                    "A": [stack[:, i, a:b].float() for a, b in p.attribute_spans]})
    return out


def _unpadded(cache: Any, layer: int) -> torch.Tensor:
    from lmscope.interventions.patch import to_token_coordinates

    return to_token_coordinates(cache[f"resid_pre.{layer}"], cache.attention_mask)


def _spans(prompts: Sequence[BindingPrompt], kind: str, slot: int) -> list[list[tuple[int, int]]]:
    return [[(p.entity_spans if kind == "entity" else p.attribute_spans)[slot]] for p in prompts]


def table_one(model: HookedModel, task: BindingTask, deltas: BindingDeltas, n_samples: int = 64, *,
              query_slots: Sequence[int] = (0, 1), split: str = "test", seed: int = 0, batch_size: int = 16,
              progress: bool = True, rows: Sequence[str] = ROWS, method: str = "kv") -> dict[str, Any]:
    """The paper's Table 1: accuracy (w.r.t. the original binding) under none / swap attributes / swap entities /
    swap both, and random same-norm vectors in place of both Δs; +Δ at slot 0, −Δ at slot 1, every layer.
    ``method``: see :func:`score_many` (``"kv"``: calibration and every queried slot share each context's run)."""
    tok = model.tokenizer
    contexts = sample_contexts(tok, task, n_samples, split=split, seed=seed, spare_entity=True)
    # calibration and the conditions share each batch of contexts' forward (and its resid_pre, if needed)
    memo = ContextMemo(model, acts=any(r != "none" for r in rows))
    medians = calibration(model, task, contexts, split, batch_size=batch_size, progress=progress, method=method,
                          memo=memo)
    rand = BindingDeltas(deltas.task, [random_like(d, seed + 1) for d in deltas.entity],
                         [random_like(d, seed + 2) for d in deltas.attribute], deltas.n_samples)
    plan = {"none": (None, ()), "swap_attributes": (deltas, ("attribute",)), "swap_entities": (deltas, ("entity",)),
            "swap_both": (deltas, ("entity", "attribute")), "random_both": (rand, ("entity", "attribute"))}
    unknown = [r for r in rows if r not in plan]
    if unknown:
        raise InputError(f"Unknown Table-1 rows {unknown}; known: {', '.join(plan)}.")
    out: dict[str, Any] = {"task": task.name, "delta_task": deltas.task, "n_samples": n_samples, "rows": {}}
    # every queried slot in one call: under the KV path each context's rewritten tokens and the question
    # prefix the slots share run once per condition
    m = len(contexts)
    prompts = [build_prompt(tok, task, c, q) for q in query_slots for c in contexts]
    makes: dict[str, Any] = {row: None if plan[row][0] is None else _shift_maker(prompts, *plan[row])  # type: ignore[arg-type]
                             for row in rows}
    scores = score_many(model, prompts, makes, batch_size=batch_size, progress=progress, desc="table 1",
                        method=method, memo=memo)
    for j, q in enumerate(query_slots):
        for row, all_lp in scores.items():
            lp = all_lp[j * m:(j + 1) * m]
            res = out["rows"].setdefault(row, {"accuracy": [], "calibrated_accuracy": [], "mean_logprob": []})
            res["accuracy"].append(accuracy(lp, [q] * m))
            res["calibrated_accuracy"].append(calibrated_accuracy(lp, [c.attributes for c in contexts],
                                                                  [q] * m, medians))
            res["mean_logprob"].append(float(lp[:, q].mean()))
    out["query_slots"] = list(query_slots)
    return float32_clean_all(out)


def _shift_maker(prompts: Sequence[BindingPrompt], deltas: BindingDeltas, kinds: Sequence[str],
                 coords: tuple[float, float] | None = None) -> Any:
    """Per batch: the frozen context plus one ``BindingShift`` per kind (swap: +Δ(1) at slot 0, −Δ(1) at
    slot 1; ``coords=(a, b)``: slot 1 moved to ``(a−1)Δ(1) + bΔ(2)`` from where it was)."""
    def make(rows: Sequence[int], frozen: FrozenContext | None) -> list:
        assert frozen is not None
        batch = [prompts[i] for i in rows]
        ivs: list[Any] = [frozen.patch]
        for kind in kinds:
            if coords is None:
                ivs.append(deltas.shift(kind, 1, _spans(batch, kind, 0), _spans(batch, kind, 1)))
            else:
                d = (deltas.entity if kind == "entity" else deltas.attribute)
                t = max(d[0].shape[1], d[1].shape[1])
                d1, d2 = (torch.cat([x, x[:, -1:].expand(-1, t - x.shape[1], -1)], 1) for x in d[:2])
                vec = (coords[0] - 1) * d1 + coords[1] * d2
                ivs.append(BindingShift(vec, range(vec.shape[0]), _spans(batch, kind, 1), None))
        return ivs
    return make


def transfer(model: HookedModel, task: BindingTask, deltas_by_task: dict[str, BindingDeltas], n_samples: int = 64, *,
             rows: Sequence[str] = ("swap_attributes", "swap_entities", "swap_both", "random_both"), seed: int = 0,
             batch_size: int = 16, progress: bool = True, method: str = "kv") -> dict[str, Any]:
    """Δ of each task applied to ``task``'s test contexts: swap rows (accuracy w.r.t. the original binding;
    a transferable Δ drives swap_entities/swap_attributes towards 0), plus zero and random controls."""
    out: dict[str, Any] = {"target_task": task.name, "n_samples": n_samples, "by_delta": {}}
    for name, d in deltas_by_task.items():
        res = table_one(model, task, d, n_samples, query_slots=(0,), seed=seed, batch_size=batch_size,
                        progress=progress, rows=rows, method=method)
        out["by_delta"][name] = {row: v["calibrated_accuracy"][0] for row, v in res["rows"].items()}
    res = table_one(model, task, next(iter(deltas_by_task.values())), n_samples, query_slots=(0,), seed=seed,
                    batch_size=batch_size, progress=progress, rows=("none",), method=method)
    out["zero_vector"] = res["rows"]["none"]["calibrated_accuracy"][0]
    return out


def subspace(model: HookedModel, task: BindingTask, deltas3: BindingDeltas, n_samples: int = 32, *,
             grid: Sequence[float] = (-1.0, 0.0, 1.0, 2.0), split: str = "test", seed: int = 0,
             batch_size: int = 16, progress: bool = True, method: str = "kv") -> dict[str, Any]:
    """Move slot 1 (entity and attribute) to ``a·Δ(1) + b·Δ(2)`` (3-entity Δs) relative to slot 0's ID, for
    ``(a, b)`` on a grid; accuracy of both queries (slot 1 at the root (0, 0) shares slot 0's ID)."""
    if len(deltas3.entity) < 2:
        raise InputError("subspace needs Δ(1) and Δ(2): estimate_deltas(..., n_entities=3).")
    tok = model.tokenizer
    contexts = sample_contexts(tok, task, n_samples, split=split, seed=seed)
    prompts = [build_prompt(tok, task, c, q) for c in contexts for q in (0, 1)]
    makes: dict[Any, Any] = {(i, j): _shift_maker(prompts, deltas3, ("entity", "attribute"), coords=(a, b))
             for i, b in enumerate(grid) for j, a in enumerate(grid)}
    scores = score_many(model, prompts, makes, batch_size=batch_size, progress=progress, desc="subspace grid",
                        method=method)
    acc = np.zeros((len(grid), len(grid)))
    for key, lp in scores.items():
        i, j = cast(tuple[int, int], key)
        acc[i, j] = accuracy(lp, [cast(int, p.query_slot) for p in prompts])
    return {"task": task.name, "n_samples": n_samples, "grid": list(grid), "accuracy": float32_clean_all(acc.tolist()),
            "axes": "rows: b (Δ(2) coefficient), columns: a (Δ(1) coefficient); (1, 0) = unchanged"}
