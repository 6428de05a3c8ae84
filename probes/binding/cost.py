"""What :func:`~lmscope.probes.binding.study.binding_study` will run and about how long it takes, said in one line
before it starts (the study takes minutes at its defaults, and nothing else shows that up front).

The estimate counts *runs*: one prompt scored under one condition, or one context forward (the KV path scores
each at about the same cost). Each part's count follows from the study's sizes (:data:`RUNS`); the position
shift runs whole prompts with moved positions, so its runs count twice, and a patching map cell, a partial
forward of one pair, counts half. The seconds per run come from the measured study (docs/costs.md):
``binding_study(model)`` with its defaults, 15,311 runs, took 11.5 min (690 s) on SmolLM2-135M, 2 CPU cores
(load not recorded); the idle full-size study (500 train contexts, no transfer or subspace part: 14,679 runs)
took 670 s, which the same rate puts at 662 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from lmscope.lens.training.runplan import rough_duration

from .tasks import BindingTask

#: Seconds per run: 690 s / 15,311 runs (the defaults on SmolLM2-135M, 2 CPU cores).
SECONDS_PER_RUN = 690.0 / 15_311
#: Conditions of a Table-1 query: none, swap attributes, swap entities, swap both, random both.
TABLE_ROWS = 5
#: Cells of SmolLM2's patching map (30 layers x a 57-token CAPITALS pair), each half a run.
PATCHING_RUNS = 30 * 57 // 2


@dataclass(frozen=True)
class StudySizes:
    """The sizes of one ``binding_study`` call that its cost scales with."""

    tasks: Sequence[BindingTask]
    main: BindingTask
    n_train: int
    n_test: int
    n_factorization: int
    n_position: int
    n_subspace: int
    n_transfer: int
    grid: int
    fractions: int
    position_what: int
    table_slots: int
    transfer_rows: int
    keys_only: bool

    def deltas(self) -> int:
        """Context forwards of the Δ estimates (the context and its rolled copy, per train context and task)."""
        return 2 * self.n_train * len(self.tasks)


#: Runs of each part of the study: per test context the calibration query plus one query per slot (baseline),
#: per queried slot every Table-1 condition (table_one, with the Δ estimates), every task's Δ on the main task
#: (transfer, plus the zero-vector row), 2n queries under none + 3 swaps + the source run (factorization), both
#: queries at every fraction for each moved kind, twice with the key-only variant (position), the 3-entity Δ
#: plus both queries at every grid point (subspace), and the patching map.
RUNS: dict[str, Callable[[StudySizes], float]] = {
    "baseline": lambda s: sum(s.n_test * (1 + t.n_entities) for t in s.tasks),
    "table_one": lambda s: s.deltas() + len(s.tasks) * s.n_test * (1 + s.table_slots * TABLE_ROWS),
    "transfer": lambda s: s.n_transfer * ((1 + s.transfer_rows) * len(s.tasks) + 2),
    "factorization": lambda s: s.n_factorization * 2 * s.main.n_entities * 5,
    "position": lambda s: 2 * s.n_position * 2 * s.fractions * s.position_what * (2 if s.keys_only else 1),
    "subspace": lambda s: (3 * s.n_train + 2 * s.n_subspace * s.grid ** 2) if s.main.fixed_slots in (None, 3) else 0,
    "patching": lambda s: PATCHING_RUNS,
}


def study_runs(sizes: StudySizes, parts: Sequence[str]) -> dict[str, float]:
    """Runs of each selected part (the Δ estimates count under ``table_one``, or under ``transfer`` without it)."""
    runs = {part: RUNS[part](sizes) for part in RUNS if part in parts}
    if "transfer" in runs and "table_one" not in runs:
        runs["transfer"] += sizes.deltas()
    return runs


def announce_study(sizes: StudySizes, parts: Sequence[str]) -> str:
    """One line: which parts run on which tasks and sizes, and about how long on the reference machine."""
    runs = study_runs(sizes, parts)
    took = rough_duration(sum(runs.values()) * SECONDS_PER_RUN)
    names = ", ".join(t.name for t in sizes.tasks)
    return (f"lmscope: binding_study runs {', '.join(runs) or 'nothing'} on {names} ({sizes.n_test} test / "
            f"{sizes.n_train} train contexts per task): {took} for SmolLM2-135M on 2 idle CPU cores, longer under "
            f"load or for a larger model; smaller n_test/n_train or fewer parts run faster.")
