"""The KV path of ``score_many`` (context run once, rewritten context tokens + question over its cache) equals the
full-prompt path: per condition, per architecture, with left padding, and where it must fall back."""

from __future__ import annotations

import pytest
import torch
from tiny_models import COMMON, SLIDING_LAYERS, build_tiny
from toys import binding_task

from lmscope.interventions import HookedModel, Steer
from lmscope.probes.binding import baseline, estimate_deltas, factorization, table_one
from lmscope.probes.binding.experiments import calibration
from lmscope.probes.binding.means import _shift_maker
from lmscope.probes.binding.prompts import build_prompt, sample_contexts
from lmscope.probes.binding.runs import kv_unsupported, score_many
from lmscope.probes.binding.shift import random_like

TIGHT = dict(rtol=1e-5, atol=1e-5)


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
def test_kv_equals_full_per_condition(arch: str, fake_tok, toy_task, one_thread, monkeypatch) -> None:
    model = _model(arch, fake_tok)
    if arch == "gemma2":  # its battery window (4) is shorter than the prompts: the KV path must refuse it
        model.hf_model.config.sliding_window = 48
    prompts, makes = _conditions(model, toy_task)
    assert len({p.context_len for p in prompts[:3]}) > 1 and len({len(p.ids) for p in prompts[:3]}) > 1  # padding
    assert kv_unsupported(model, prompts) is None
    full = score_many(model, prompts, makes, batch_size=3, progress=False, method="full")
    calls = _count_full_runs(monkeypatch)
    kv = score_many(model, prompts, makes, batch_size=3, progress=False, method="kv")
    assert not calls  # every condition took the KV path
    for name in makes:
        torch.testing.assert_close(kv[name], full[name], **TIGHT, msg=name)
    assert (full["swap_both"] - full["none"]).abs().max() > 1e-3  # the interventions do change the scores


@pytest.mark.parametrize("arch", ["gemma3_text", "falcon_alibi", "mistral_sliding"])
def test_kv_falls_back_where_prefix_reuse_is_not_exact(arch: str, fake_tok, toy_task, one_thread,
                                                       monkeypatch) -> None:
    model = _model(arch, fake_tok)
    prompts, makes = _conditions(model, toy_task, 3)
    assert kv_unsupported(model, prompts) is not None
    full = score_many(model, prompts, makes, batch_size=4, progress=False, method="full")
    calls = _count_full_runs(monkeypatch)
    kv = score_many(model, prompts, makes, batch_size=4, progress=False)
    assert calls
    for name in makes:
        torch.testing.assert_close(kv[name], full[name], rtol=0, atol=0)


def test_kv_falls_back_per_condition(toy_model, toy_task, monkeypatch) -> None:
    """A condition writing another site, or not freezing the context, runs the full prompt; others stay on KV."""
    prompts, makes = _conditions(toy_model, toy_task, 3)
    vec = torch.ones(toy_model.d_model)
    odd = {"none": None, "swap_both": makes["swap_both"],
           "steer_mid": lambda rows, fr: [fr.patch, Steer("resid_mid.1", vec, positions=[slice(0, 2)] * len(rows))],
           "unfrozen": lambda rows, fr: [Steer("resid_pre.1", vec, positions=[slice(0, 2)] * len(rows))],
           "question": lambda rows, fr: [fr.patch, Steer("resid_pre.1", vec, positions=-1)]}
    full = score_many(toy_model, prompts, odd, batch_size=6, progress=False, method="full")
    calls = _count_full_runs(monkeypatch)
    kv = score_many(toy_model, prompts, odd, batch_size=6, progress=False)
    assert len(calls) == 3  # one batch, three conditions the KV path cannot reproduce
    for name in odd:
        torch.testing.assert_close(kv[name], full[name], **TIGHT, msg=name)


def test_kv_experiments_equal_full(toy_model, toy_task) -> None:
    kw = dict(progress=False, batch_size=4)
    d_full = estimate_deltas(toy_model, toy_task, 6, method="full", **kw)
    d_kv = estimate_deltas(toy_model, toy_task, 6, **kw)
    for a, b in zip(d_full.entity + d_full.attribute, d_kv.entity + d_kv.attribute):
        torch.testing.assert_close(b, a, **TIGHT)
    for fn, args in ((baseline, (4,)), (table_one, (d_full, 4)), (factorization, (2,))):
        full, kv = fn(toy_model, toy_task, *args, method="full", **kw), fn(toy_model, toy_task, *args, **kw)
        _close(kv, full)
    ctxs = sample_contexts(toy_model.tokenizer, toy_task, 4, split="test", seed=0, spare_entity=True)
    _close(calibration(toy_model, toy_task, ctxs, "test", progress=False),
           calibration(toy_model, toy_task, ctxs, "test", progress=False, method="full"))


def _close(a, b) -> None:  # type: ignore[no-untyped-def]
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
    else:
        assert a == b


@pytest.mark.slow
def test_kv_equals_full_on_smollm(smollm) -> None:
    from lmscope.probes.binding import load_task

    task = load_task("capitals")
    kw = dict(progress=False, batch_size=8)
    d = estimate_deltas(smollm, task, 8, **kw)
    torch.testing.assert_close(d.entity[0], estimate_deltas(smollm, task, 8, method="full", **kw).entity[0],
                               rtol=1e-4, atol=1e-4)
    contexts = sample_contexts(smollm.tokenizer, task, 6, split="test", seed=0, spare_entity=True)
    prompts = [build_prompt(smollm.tokenizer, task, c, q) for c in contexts for q in (0, 1)]
    rand = type(d)(d.task, [random_like(x, 1) for x in d.entity], [random_like(x, 2) for x in d.attribute], 8)
    makes = {"none": None, "swap_attributes": _shift_maker(prompts, d, ("attribute",)),
             "swap_entities": _shift_maker(prompts, d, ("entity",)),
             "swap_both": _shift_maker(prompts, d, ("entity", "attribute")),
             "random_both": _shift_maker(prompts, rand, ("entity", "attribute"))}
    full = score_many(smollm, prompts, makes, batch_size=8, progress=False, method="full")
    kv = score_many(smollm, prompts, makes, batch_size=8, progress=False)
    for name in makes:
        torch.testing.assert_close(kv[name], full[name], rtol=1e-4, atol=1e-4, msg=name)
    _close_loose(baseline(smollm, task, 6, **kw), baseline(smollm, task, 6, method="full", **kw))
    _close_loose(factorization(smollm, task, 3, **kw), factorization(smollm, task, 3, method="full", **kw))


def _close_loose(a, b) -> None:  # type: ignore[no-untyped-def]
    if isinstance(a, dict):
        for k in a:
            _close_loose(a[k], b[k])
    elif isinstance(a, list):
        for x, y in zip(a, b):
            _close_loose(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-4)


def test_kv_units_share_the_question_prefix_of_a_context(toy_model, toy_task) -> None:
    """Queries of one context with the same rewrites form one unit whose shared question prefix runs once;
    other intended values (or another context) split the unit; every row keeps at least its last token."""
    from lmscope.probes.binding.runs import _units

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
