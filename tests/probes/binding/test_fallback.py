"""The KV path never changes results silently: a condition it cannot reproduce exactly runs the full path (for
that condition only) with one warning naming it and the reason, and planning never runs a user intervention
outside a session nor shows it planning layouts.

The first tests use only the public scoring entry point (``score_many``), so they run on any implementation:
each fails on the planner that trusted every ``resid_pre`` intervention (it planned these conditions from one
noise draw, silently, and bound and called the interventions by hand). The last ones check what the planner
does plan, through its table of trusted types.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import pytest
import torch
from toys import binding_task

from lmscope.interventions import Ablate, Cache, Edit, Steer
from lmscope.interventions.backends import hooks
from lmscope.probes.binding.prompts import build_prompt, sample_contexts
from lmscope.probes.binding.runs import score_many

CTX = [slice(0, 3)]  # the first three tokens of every prompt: context in all of them


@pytest.fixture
def setting(toy_model) -> tuple[Any, list]:  # type: ignore[no-untyped-def]
    """Six contexts x two queries with names of one to three tokens (padding, contexts of several lengths):
    batches of 3 give other batches on the KV path (3 contexts = 6 prompts) than on the full path (3 prompts)."""
    task = binding_task(multi_token=True)
    contexts = sample_contexts(toy_model.tokenizer, task, 6, split="test", seed=0, spare_entity=True)
    prompts = [build_prompt(toy_model.tokenizer, task, c, q) for c in contexts for q in (0, 1)]
    assert len({p.context_len for p in prompts}) > 1 and min(p.context_len for p in prompts) > 3
    return toy_model, prompts


def _centre(v: torch.Tensor) -> torch.Tensor:
    return v - v.mean(dim=(0, 1), keepdim=True)  # a function of the whole tensor: every token of every prompt


def _unplannable(prompts: list) -> dict[str, Any]:
    """Conditions that write only context tokens, from values the context alone does not fix."""
    ref = [prompts[0].text, prompts[3].text]
    per_row = lambda rows: CTX * len(rows)  # noqa: E731
    return {
        "mean": lambda rows, fr: [fr.patch, Ablate("resid_pre.1", how="mean", positions=per_row(rows))],
        "resample": lambda rows, fr: [fr.patch, Ablate("resid_pre.1", how="resample", positions=per_row(rows))],
        "resample_ref": lambda rows, fr: [fr.patch, Ablate("resid_pre.2", how="resample", reference=ref, seed=3,
                                                           positions=per_row(rows))],
        "edit": lambda rows, fr: [fr.patch, Edit("resid_pre.1", _centre, positions=per_row(rows))],
    }


REASONS = {"mean": "without a reference averages", "resample": "place in the batch",
           "resample_ref": "place in the batch", "edit": "arbitrary function"}


@pytest.mark.parametrize("name", sorted(REASONS))
def test_unplannable_condition_warns_and_equals_full(setting, name: str, same_results) -> None:
    model, prompts = setting
    makes = {"none": None, name: _unplannable(prompts)[name]}
    full = score_many(model, prompts, makes, batch_size=3, progress=False, method="full")
    with pytest.warns(UserWarning, match=rf"condition '{name}' runs by the full prompts.*{REASONS[name]}") as rec:
        kv = score_many(model, prompts, makes, batch_size=3, progress=False)
    assert sum(f"condition '{name}'" in str(w.message) for w in rec) == 1  # once per call, not per batch
    same_results(kv, full, model.dtype)
    assert torch.equal(kv[name], full[name])  # the full path's very runs (same batches)
    assert (full[name] - full["none"]).abs().max() > 1e-3  # the condition does change the scores


class Spy(Steer):
    """A Steer that records, for every bind/start/call, whether the core's session machinery runs it."""

    internal = True  # a test helper: kept out of the registry of loadable interventions
    events: list[tuple[str, bool]] = []

    def bind(self, model: Any) -> None:
        Spy.events.append(("bind", _inside_attach()))
        super().bind(model)

    def start(self) -> None:
        Spy.events.append(("start", _inside_attach()))
        super().start()

    def __call__(self, value: torch.Tensor, site: Any, ctx: Any) -> torch.Tensor:
        Spy.events.append(("call", any(self in s.interventions for s in _open_sessions())))
        return super().__call__(value, site, ctx)


def _inside_attach() -> bool:
    """Whether the caller runs inside the core's ``attach`` (which binds and starts a session's interventions)."""
    code = hooks.attach.__wrapped__.__code__  # type: ignore[attr-defined]
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _open_sessions() -> tuple[Any, ...]:
    var = getattr(hooks, "_ACTIVE", None)
    if var is None:  # the session state lives beside the hooks backend
        from lmscope.interventions.backends.session import _ACTIVE as var
    return var.get()


def _spy_condition(model: Any) -> Any:
    vec = torch.full((model.d_model,), 0.5)
    return lambda rows, fr: [fr.patch, Spy("resid_pre.1", vec, positions=CTX * len(rows))]


def test_planning_never_runs_a_user_intervention_outside_a_session(setting, same_results) -> None:
    model, prompts = setting
    makes = {"spy": _spy_condition(model)}
    full = score_many(model, prompts, makes, batch_size=3, progress=False, method="full")
    Spy.events.clear()
    with pytest.warns(UserWarning, match="condition 'spy'.*not an intervention the planner can reproduce"):
        kv = score_many(model, prompts, makes, batch_size=3, progress=False)
    assert {kind for kind, _ in Spy.events} == {"bind", "start", "call"}
    assert [e for e in Spy.events if not e[1]] == []
    same_results(kv, full, model.dtype)


def test_cache_in_a_condition_records_only_real_forwards(setting) -> None:
    model, prompts = setting
    made: dict[str, list[Cache]] = {"kv": [], "full": []}

    def maker(bucket: list[Cache]) -> Any:
        vec = torch.full((model.d_model,), 0.5)

        def make(rows: Any, fr: Any) -> list:
            bucket.append(Cache("resid_pre.*"))
            return [fr.patch, Steer("resid_pre.1", vec, positions=CTX * len(rows)), bucket[-1]]
        return make

    score_many(model, prompts, {"cached": maker(made["full"])}, batch_size=3, progress=False, method="full")
    with pytest.warns(UserWarning, match="condition 'cached'.*Cache reads activations"):
        score_many(model, prompts, {"cached": maker(made["kv"])}, batch_size=3, progress=False)
    recorded = {k: [c.values() for c in v if c.values()] for k, v in made.items()}
    assert len(recorded["kv"]) == len(recorded["full"]) == 4  # the full path's four batches, nothing else
    for got, want in zip(recorded["kv"], recorded["full"]):
        assert got.keys() == want.keys() and all(torch.equal(got[s], want[s]) for s in want)  # type: ignore[arg-type]


# -- what the planner does plan (these use its module: they describe the current implementation) ------------

def test_ablations_with_fixed_values_stay_on_the_kv_path(setting, monkeypatch, same_results) -> None:
    """Zero and reference-mean ablations write values the context alone fixes: planned, exact, no warning."""
    import lmscope.probes.binding.runs as runs

    model, prompts = setting
    ref = [prompts[0].text, prompts[3].text]
    makes = {"zero": lambda rows, fr: [fr.patch, Ablate("resid_pre.1", positions=CTX * len(rows))],
             "mean_ref": lambda rows, fr: [fr.patch, Ablate("resid_pre.2", how="mean", reference=ref,
                                                            positions=CTX * len(rows))]}
    full = score_many(model, prompts, makes, batch_size=3, progress=False, method="full")
    full_runs: list[int] = []
    monkeypatch.setattr(runs, "_score_full", lambda *a, **k: full_runs.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback warning would raise
        kv = score_many(model, prompts, makes, batch_size=3, progress=False)
    assert full_runs == []
    same_results(kv, full, model.dtype)


def test_a_trusted_intervention_is_planned_inside_a_session(setting, monkeypatch, same_results) -> None:
    from lmscope.probes.binding import planner

    model, prompts = setting
    monkeypatch.setitem(planner.PLANNABLE, Spy, lambda iv: None)
    makes = {"spy": _spy_condition(model)}
    full = score_many(model, prompts, makes, batch_size=3, progress=False, method="full")
    Spy.events.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kv = score_many(model, prompts, makes, batch_size=3, progress=False)
    assert {kind for kind, _ in Spy.events} == {"bind", "start", "call"}
    assert [e for e in Spy.events if not e[1]] == []
    same_results(kv, full, model.dtype)


class ReadsQuestion(Steer):
    """Writes every row's first token from its last one (a question token): not a function of the context."""

    internal = True

    def __call__(self, value: torch.Tensor, site: Any, ctx: Any) -> torch.Tensor:
        out = value.clone()
        first = ctx.pad_left.to(value.device)
        out[torch.arange(len(first)), first] = value[:, -1]
        return out


def test_two_random_draws_catch_context_writes_that_read_the_question(setting, monkeypatch) -> None:
    """Even an intervention the planner is told to trust is refused when its context writes follow the
    values at the question tokens."""
    from lmscope.probes.binding import planner

    model, prompts = setting
    monkeypatch.setitem(planner.PLANNABLE, ReadsQuestion, lambda iv: None)
    vec = torch.zeros(model.d_model)
    makes = {"reads": lambda rows, fr: [fr.patch, ReadsQuestion("resid_pre.1", vec)]}
    full = score_many(model, prompts, makes, batch_size=3, progress=False, method="full")
    with pytest.warns(UserWarning, match="condition 'reads'.*two random draws"):
        kv = score_many(model, prompts, makes, batch_size=3, progress=False)
    assert torch.equal(kv["reads"], full["reads"])
