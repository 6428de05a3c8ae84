"""The KV path of ``score_many`` (context run once, rewritten context tokens + question over its cache) equals the
full-prompt path: per condition, per architecture, with left padding, and where it must fall back (saying so).
Every comparison covers every key and every value of both results (``same_results``)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import pytest
import torch
from tiny_models import COMMON, SLIDING_LAYERS, build_tiny
from toys import binding_task

from lmscope.interventions import HookedModel, Steer
from lmscope.probes.binding import baseline, estimate_deltas, factorization, table_one
from lmscope.probes.binding.contexts import kv_unsupported
from lmscope.probes.binding.experiments import calibration
from lmscope.probes.binding.means import _shift_maker
from lmscope.probes.binding.prompts import build_prompt, sample_contexts
from lmscope.probes.binding.runs import score_many
from lmscope.probes.binding.shift import random_like


def _gemma3_wide() -> torch.nn.Module:
    """The tiny gemma3_text battery model with a sliding window longer than twice every toy prompt."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(**COMMON, num_key_value_heads=2, head_dim=16, sliding_window=48,
                              layer_types=SLIDING_LAYERS, query_pre_attn_scalar=12, final_logit_softcapping=3.0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.fixture
def toy_task():  # type: ignore[no-untyped-def]
    """Names of one to three tokens: prompts of a batch differ in length (padding)."""
    return binding_task(multi_token=True)


def _model(name: str, tok) -> HookedModel:  # type: ignore[no-untyped-def]
    return HookedModel(_gemma3_wide() if name == "gemma3_wide" else build_tiny(name), tok)


def _conditions(model: HookedModel, task, n: int = 5):  # type: ignore[no-untyped-def]
    d = estimate_deltas(model, task, 4, progress=False)
    rand = type(d)(d.task, [random_like(x, 1) for x in d.entity], [random_like(x, 2) for x in d.attribute], 4)
    contexts = sample_contexts(model.tokenizer, task, n, split="test", seed=0, spare_entity=True)
    prompts = [build_prompt(model.tokenizer, task, c, q) for c in contexts for q in (0, 1)]
    makes = {"none": None, "frozen": lambda rows, fr: [fr.patch],
             "swap_attributes": _shift_maker(prompts, d, ("attribute",)),
             "swap_entities": _shift_maker(prompts, d, ("entity",)),
             "swap_both": _shift_maker(prompts, d, ("entity", "attribute")),
             "random_both": _shift_maker(prompts, rand, ("entity", "attribute")),
             "subspace": _shift_maker(prompts, type(d)(d.task, d.entity * 2, d.attribute * 2, 4),
                                      ("entity", "attribute"), coords=(0.0, 1.0))}
    return prompts, makes


def score_quietly(*args: Any, **kwargs: Any) -> dict[Any, torch.Tensor]:
    """``score_many``, asserting that it warns of no fallback (every condition took the path asked for)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = score_many(*args, **kwargs)
    assert [str(w.message) for w in caught if "score_many" in str(w.message)] == []
    return out


def fallback_warnings(record: Any) -> dict[str, str]:
    """Condition name -> message of each fallback warning ``pytest.warns`` recorded."""
    import re

    out = {}
    for w in record:
        m = re.match(r"score_many: condition '([^']+)' runs by the full prompts", str(w.message))
        if m:
            assert m.group(1) not in out, f"condition {m.group(1)} warned twice"
            out[m.group(1)] = str(w.message)
    return out


def _count_full_runs(monkeypatch) -> list[int]:  # type: ignore[no-untyped-def]
    import lmscope.probes.binding.runs as runs

    calls: list[int] = []
    orig = runs.candidate_logprobs

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return orig(*args, **kwargs)

    monkeypatch.setattr(runs, "candidate_logprobs", counted)
    return calls


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3", "gpt_neox", "gemma2", "gemma3_wide"])
def test_kv_equals_full_per_condition(arch: str, fake_tok, toy_task, one_thread, monkeypatch,
                                     same_results) -> None:
    model = _model(arch, fake_tok)
    if arch == "gemma2":  # its battery window (4) is shorter than the prompts: the KV path must refuse it
        model.hf_model.config.sliding_window = 48
    prompts, makes = _conditions(model, toy_task)
    assert len({p.context_len for p in prompts[:3]}) > 1 and len({len(p.ids) for p in prompts[:3]}) > 1  # padding
    assert kv_unsupported(model, prompts) is None
    full = score_quietly(model, prompts, makes, batch_size=3, progress=False, method="full")
    calls = _count_full_runs(monkeypatch)
    kv = score_quietly(model, prompts, makes, batch_size=3, progress=False, method="kv")
    assert not calls  # every condition took the KV path, and none warned
    same_results(kv, full, model.dtype)
    assert (full["swap_both"] - full["none"]).abs().max() > 1e-3  # the interventions do change the scores


@pytest.mark.parametrize("arch", ["gemma3_text", "falcon_alibi", "mistral_sliding"])
def test_kv_falls_back_where_prefix_reuse_is_not_exact(arch: str, fake_tok, toy_task, one_thread,
                                                       monkeypatch) -> None:
    model = _model(arch, fake_tok)
    prompts, makes = _conditions(model, toy_task, 3)
    why = kv_unsupported(model, prompts)
    assert why is not None
    full = score_quietly(model, prompts, makes, batch_size=4, progress=False, method="full")
    calls = _count_full_runs(monkeypatch)
    with pytest.warns(UserWarning, match="runs every condition by the full prompts") as record:
        kv = score_many(model, prompts, makes, batch_size=4, progress=False)
    assert calls and sum("score_many" in str(w.message) for w in record) == 1  # said once per call
    assert kv.keys() == full.keys() and all(torch.equal(kv[k], full[k]) for k in full)  # the same runs


def test_kv_falls_back_per_condition(toy_model, toy_task, monkeypatch, same_results) -> None:
    """A condition writing another site, not freezing the context first, or writing the question runs the full
    path, with one warning naming it and the reason; the others stay on the KV path."""
    prompts, makes = _conditions(toy_model, toy_task, 3)
    vec = torch.ones(toy_model.d_model)
    odd = {"none": None, "swap_both": makes["swap_both"],
           "steer_mid": lambda rows, fr: [fr.patch, Steer("resid_mid.1", vec, positions=[slice(0, 2)] * len(rows))],
           "unfrozen": lambda rows, fr: [Steer("resid_pre.1", vec, positions=[slice(0, 2)] * len(rows))],
           "question": lambda rows, fr: [fr.patch, Steer("resid_pre.1", vec, positions=-1)]}
    full = score_quietly(toy_model, prompts, odd, batch_size=6, progress=False, method="full")
    calls = _count_full_runs(monkeypatch)
    with pytest.warns(UserWarning) as record:
        kv = score_many(toy_model, prompts, odd, batch_size=6, progress=False)
    warned = fallback_warnings(record)
    assert sorted(warned) == ["question", "steer_mid", "unfrozen"]
    assert "acts on resid_mid.1" in warned["steer_mid"] and "outside the context" in warned["question"]
    assert "not the batch's frozen context" in warned["unfrozen"]
    assert len(calls) == 1 + 3  # one batch of the full path: its clean run, then the three conditions
    same_results(kv, full, toy_model.dtype)
    assert all(torch.equal(kv[k], full[k]) for k in warned)  # they ran exactly as the full path runs them


def test_kv_experiments_equal_full(toy_model, toy_task, same_results) -> None:
    kw: dict[str, Any] = dict(progress=False, batch_size=4)
    d_full = estimate_deltas(toy_model, toy_task, 6, method="full", **kw)
    d_kv = estimate_deltas(toy_model, toy_task, 6, **kw)
    same_results(dataclasses.asdict(d_kv), dataclasses.asdict(d_full))
    for fn, args in ((baseline, (4,)), (table_one, (d_full, 4)), (factorization, (2,))):
        full = fn(toy_model, toy_task, *args, method="full", **kw)  # type: ignore[operator]
        same_results(score_quietly_call(fn, toy_model, toy_task, *args, **kw), full)
    ctxs = sample_contexts(toy_model.tokenizer, toy_task, 4, split="test", seed=0, spare_entity=True)
    same_results(calibration(toy_model, toy_task, ctxs, "test", progress=False),
                 calibration(toy_model, toy_task, ctxs, "test", progress=False, method="full"))


def score_quietly_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, asserting that no scoring call in it fell back to the full path."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    assert [str(w.message) for w in caught if "score_many" in str(w.message)] == []
    return out


@pytest.mark.slow
def test_kv_equals_full_on_smollm(smollm, same_results) -> None:
    from lmscope.probes.binding import load_task

    task = load_task("capitals")
    kw = dict(progress=False, batch_size=8)
    d = estimate_deltas(smollm, task, 8, **kw)
    same_results(dataclasses.asdict(d), dataclasses.asdict(estimate_deltas(smollm, task, 8, method="full", **kw)))
    contexts = sample_contexts(smollm.tokenizer, task, 6, split="test", seed=0, spare_entity=True)
    prompts = [build_prompt(smollm.tokenizer, task, c, q) for c in contexts for q in (0, 1)]
    rand = type(d)(d.task, [random_like(x, 1) for x in d.entity], [random_like(x, 2) for x in d.attribute], 8)
    makes = {"none": None, "swap_attributes": _shift_maker(prompts, d, ("attribute",)),
             "swap_entities": _shift_maker(prompts, d, ("entity",)),
             "swap_both": _shift_maker(prompts, d, ("entity", "attribute")),
             "random_both": _shift_maker(prompts, rand, ("entity", "attribute"))}
    full = score_quietly(smollm, prompts, makes, batch_size=8, progress=False, method="full")
    kv = score_quietly(smollm, prompts, makes, batch_size=8, progress=False)
    same_results(kv, full, smollm.dtype)
    for fn, n in ((baseline, 6), (factorization, 3)):
        same_results(score_quietly_call(fn, smollm, task, n, **kw), fn(smollm, task, n, method="full", **kw))


def test_kv_units_share_the_question_prefix_of_a_context(toy_model, toy_task) -> None:
    """Queries of one context with the same rewrites form one unit whose shared question prefix runs once;
    other intended values (or another context) split the unit; every row keeps at least its last token."""
    from lmscope.probes.binding.kvpath import units as _units_of
    from lmscope.probes.binding.planner import WritePlan

    def _units(chunk, rmap, written, values):  # type: ignore[no-untyped-def]
        u = _units_of(chunk, rmap, None if values is None else WritePlan(written, values))
        return u.rows, u.shared

    tok = toy_model.tokenizer
    contexts = sample_contexts(tok, toy_task, 2, split="test", seed=0, spare_entity=True)
    prompts = [build_prompt(tok, toy_task, c, q) for c in contexts for q in (0, 1)]
    q0, q1 = (p.ids[p.context_len:] for p in prompts[:2])
    lcp = next(k for k in range(min(len(q0), len(q1))) if q0[k] != q1[k])
    rmap = torch.tensor([0, 0, 1, 1])
    units, shared = _units(prompts, rmap, [[] for _ in prompts], None)
    assert units == [[0, 1], [2, 3]] and shared[0] == lcp > 0
    values = [torch.zeros(4, 3), torch.ones(4, 3)]  # one rewritten token per row, equal per context
    units, _ = _units(prompts, rmap, [[1], [1], [1], [1]], values)
    assert units == [[0, 1], [2, 3]]
    values[1][1] += 1  # row 1 would write other values at layer 1: it cannot share row 0's run
    units, _ = _units(prompts, rmap, [[1], [1], [1], [1]], values)
    assert units == [[0], [1], [2, 3]]
    units, shared = _units(prompts[:1], rmap[:1], [[]], None)
    assert shared == [len(q0) - 1]  # alone, a row shares all but its last token with itself


def test_context_memo_shares_context_forwards_between_calls(toy_model, toy_task, monkeypatch) -> None:
    """Calibration queries and slot queries of the same contexts, scored in two calls with one memo, run each
    batch of contexts once; without a memo, once per call. A memo serves one model."""
    import lmscope.probes.binding.contexts as contexts
    from lmscope.interventions.errors import InputError
    from lmscope.probes.binding import ContextMemo, score
    from lmscope.probes.binding.experiments import _calibration_prompts

    ctxs = sample_contexts(toy_model.tokenizer, toy_task, 4, split="test", seed=0, spare_entity=True)
    calib = _calibration_prompts(toy_model, toy_task, ctxs, "test")
    slots = [build_prompt(toy_model.tokenizer, toy_task, c, q) for q in (0, 1) for c in ctxs]
    runs: list[int] = []
    original = contexts.output_cache
    monkeypatch.setattr(contexts, "output_cache", lambda out: runs.append(1) or original(out))
    kw: dict[str, Any] = dict(batch_size=2, progress=False)
    alone = [score(toy_model, calib, **kw), score(toy_model, slots, **kw)]
    assert len(runs) == 4  # two batches of two contexts, per call
    runs.clear()
    memo = ContextMemo(toy_model)
    shared = [score(toy_model, calib, memo=memo, **kw), score(toy_model, slots, memo=memo, **kw)]
    assert len(runs) == 2 and all(torch.equal(a, b) for a, b in zip(shared, alone))
    other = HookedModel(toy_model.hf_model, toy_model.tokenizer)
    with pytest.raises(InputError, match="another model"):
        score(other, calib, memo=memo, **kw)
