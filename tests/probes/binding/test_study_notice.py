"""``binding_study`` says what it will run and about how long before it starts; its numbers read as short
decimals; its bars show only on a terminal."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from typing import Any

import pytest
from toys import FakeTerminal

from lmscope.interventions.numbers import float32_clean_all
from lmscope.probes.binding import binding_study, estimate_deltas, load_task
from lmscope.probes.binding.cost import SECONDS_PER_RUN, StudySizes, announce_study, study_runs
from lmscope.probes.binding.tasks import SHIPPED

PARTS = ("baseline", "factorization", "position", "table_one", "transfer", "subspace", "patching")
TINY = dict(n_train=2, n_test=3, n_factorization=1, n_position=1, n_subspace=1, grid=(0.0, 1.0), fractions=(0.0, 1.0),
            main_task="toy")


def _sizes(n_train: int = 128, n_test: int = 100) -> StudySizes:
    """The sizes of ``binding_study(model)`` on SmolLM2 (key-only shift supported), with these context counts."""
    tasks = [load_task(name) for name in SHIPPED]
    return StudySizes(tasks, tasks[0], n_train, n_test, 32, 32, 32, n_test, 4, 7, 2, 2, 4, keys_only=True)


def test_the_estimate_reproduces_the_measured_study_times() -> None:
    defaults = study_runs(_sizes(), PARTS)
    assert sum(defaults.values()) * SECONDS_PER_RUN == pytest.approx(690.0)  # 11.5 min at the defaults
    full = study_runs(_sizes(n_train=500), ("baseline", "table_one", "factorization", "position", "patching"))
    assert sum(full.values()) * SECONDS_PER_RUN == pytest.approx(670.0, rel=0.02)  # the idle full-size run
    line = announce_study(_sizes(), PARTS)
    assert line.startswith("lmscope: binding_study runs baseline, table_one, transfer, factorization, position, "
                           "subspace, patching on capitals, shapes, fruits, parallel (100 test / 128 train contexts")
    assert "~12 min for SmolLM2-135M on 2 idle CPU cores" in line


def test_the_estimate_scales_with_the_sizes() -> None:
    small = study_runs(_sizes(n_train=16, n_test=10), ("baseline", "table_one"))
    assert small == {"baseline": 4 * 10 * 3, "table_one": 4 * (2 * 16 + 10 * 11)}
    assert "~30 s for SmolLM2" in announce_study(_sizes(n_train=16, n_test=10), ("baseline", "table_one"))
    no_keys = dataclasses.replace(_sizes(), keys_only=False)
    assert study_runs(no_keys, ("position",))["position"] * 2 == study_runs(_sizes(), ("position",))["position"]


def test_the_study_announces_itself_once_before_it_starts(toy_model, toy_task, capsys) -> None:
    report = binding_study(toy_model, [toy_task], parts=("baseline",), progress=True, **TINY)  # type: ignore[arg-type]
    err = capsys.readouterr().err  # not a terminal: the notice alone, no bars
    assert err.splitlines() == [announce_study(_toy_sizes(toy_task), ("baseline",))], err
    assert err.startswith("lmscope: binding_study runs baseline on toy (3 test / 2 train contexts per task): ~10 s")
    assert set(report["tasks"]["toy"]) == {"baseline"}
    binding_study(toy_model, [toy_task], parts=("baseline",), progress=False, **TINY)  # type: ignore[arg-type]
    assert capsys.readouterr().err == ""


def _toy_sizes(task: Any) -> StudySizes:
    return StudySizes([task], task, 2, 3, 1, 1, 1, 3, 2, 2, 2, 2, 4, keys_only=True)


def test_study_numbers_are_short_decimals(toy_model, toy_task) -> None:
    """Every number the experiments compute reads as its float32 value's short decimal (an accuracy of 1/3 is
    0.33333334, not 0.3333333432674408)."""
    report = binding_study(toy_model, [toy_task], progress=False, **TINY)  # type: ignore[arg-type]
    numbers = {k: v for k, v in report.items() if k not in ("settings", "paper", "wall_s")}
    text = json.dumps(numbers)
    assert "0.33333334" in text or "0.6666667" in text, text[:500]
    assert float32_clean_all(numbers) == numbers


def test_bars_only_on_a_terminal(toy_model, toy_task, monkeypatch) -> None:
    for stream, drawn in ((io.StringIO(), False), (FakeTerminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        estimate_deltas(toy_model, toy_task, 2, progress=True)
        assert ("deltas" in stream.getvalue()) == drawn, stream.getvalue()
