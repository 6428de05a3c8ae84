"""``binding_study``: every binding-ID experiment in one call, as a JSON-able report.

Paper numbers (Feng & Steinhardt, LLaMA-30B) are included beside ours so a report is read against them.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Sequence

from .cost import StudySizes, announce_study
from .experiments import baseline, factorization, position_shift
from .keyshift import key_shift_unsupported
from .means import BindingDeltas, estimate_deltas, subspace, table_one, transfer
from .patching import binding_patching
from .tasks import SHIPPED, BindingTask, load_task

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

PAPER = {
    "model": "LLaMA-30B",
    "table_one_query_E0": {"none": 0.99, "swap_attributes": 0.00, "swap_entities": 0.00, "swap_both": 0.97,
                           "random_both": 0.98},
    "transfer_to_capitals_calibrated": {"capitals": 0.88, "parallel": 0.87, "shapes": 0.71, "fruits": 0.80,
                                        "zero_vector": 0.30, "random": 0.28, "chance": 0.33},
}


def binding_study(model: HookedModel, tasks: Sequence[str | BindingTask] = SHIPPED, *, n_train: int = 128,
                  n_test: int = 100, n_factorization: int = 32, n_position: int = 32, n_subspace: int = 32,
                  grid: Sequence[float] = (-1.0, 0.0, 1.0, 2.0),
                  fractions: Sequence[float] = (-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5),
                  main_task: str = "capitals", seed: int = 0, table_slots: Sequence[int] = (0, 1),
                  position_what: Sequence[str] = ("entity", "attribute"),
                  n_transfer: int | None = None,
                  transfer_rows: Sequence[str] = ("swap_attributes", "swap_entities", "swap_both", "random_both"),
                  batch_size: int = 16, progress: bool = True, method: str = "kv",
                  parts: Sequence[str] = ("baseline", "factorization", "position", "table_one", "transfer",
                                          "subspace", "patching"),
                  patching_method: str = "exact") -> dict[str, Any]:
    """Run the binding experiments on ``model``: per task a baseline and the Table-1 rows (Δ from ``n_train``
    train-split samples, evaluated on ``n_test`` test-split samples); on ``main_task`` the factorization test,
    the position shift, cross-task transfer of Δ, the Δ(1), Δ(2) subspace grid and a ``resid_pre`` x position
    patching map of one clean/attribute-exchanged pair (``binding_patching``). ``parts`` selects pieces.

    With ``progress`` it first prints (stderr) what it will run and about how long that takes: 11.5 min at the
    defaults on SmolLM2-135M, 2 CPU cores, scaled by the sizes given (:mod:`~lmscope.probes.binding.cost`)."""
    started = time.perf_counter()
    objs = [t if isinstance(t, BindingTask) else load_task(t) for t in tasks]
    by_name = {t.name: t for t in objs}
    main = by_name.get(main_task) or objs[0]
    why = key_shift_unsupported(model) if "position" in parts else None
    if progress:
        print(announce_study(StudySizes(objs, main, n_train, n_test, n_factorization, n_position, n_subspace,
                                        n_transfer or n_test, len(grid), len(fractions), len(position_what),
                                        len(table_slots), len(transfer_rows), why is None), parts),
              file=sys.stderr, flush=True)
    kw: dict[str, Any] = dict(seed=seed, batch_size=batch_size, progress=progress, method=method)
    report: dict[str, Any] = {"model": repr(model), "paper": PAPER, "tasks": {}, "settings": {
        "n_train": n_train, "n_test": n_test, "n_factorization": n_factorization, "n_position": n_position,
        "n_subspace": n_subspace, "grid": list(grid),
        "fractions": list(fractions), "seed": seed, "site": "resid_pre, every layer", "method": method}}
    deltas = _per_task(model, objs, parts, n_train, n_test, table_slots, kw, report["tasks"])
    if "factorization" in parts:
        report["factorization"] = factorization(model, main, n_factorization, **kw)
    if "position" in parts:
        pkw = {k: v for k, v in kw.items() if k != "method"}  # custom position ids: full-prompt runs
        report["position"] = {w: position_shift(model, main, n_position, what=w, fractions=fractions, **pkw)
                              for w in position_what}
        report["position_keys_only"] = {"skipped": why} if why else {
            w: position_shift(model, main, n_position, what=w, fractions=fractions, keys_only=True, **pkw)
            for w in position_what}
    if "transfer" in parts and deltas:
        report["transfer"] = transfer(model, main, deltas, n_transfer or n_test, rows=transfer_rows, **kw)
    if "subspace" in parts and main.fixed_slots in (None, 3):
        d3 = estimate_deltas(model, main, n_train, n_entities=3, **kw)
        report["subspace"] = subspace(model, main, d3, n_subspace, grid=grid, **kw)
    if "patching" in parts:
        report["patching"] = binding_patching(model, main, seed=seed, method=patching_method,
                                              batch_size=batch_size, progress=progress)
    report["wall_s"] = round(time.perf_counter() - started, 2)
    return report


def _per_task(model: HookedModel, objs: Sequence[BindingTask], parts: Sequence[str], n_train: int, n_test: int,
              table_slots: Sequence[int], kw: dict[str, Any], entries: dict[str, Any]) -> dict[str, BindingDeltas]:
    """Each task's baseline and Table 1 into ``entries[task]``; returns the Δs (estimated when Table 1 or
    the transfer part needs them)."""
    deltas = {}
    for t in objs:
        entry: dict[str, Any] = {}
        if "baseline" in parts:
            entry["baseline"] = baseline(model, t, n_test, **kw)
        if "table_one" in parts or "transfer" in parts:
            deltas[t.name] = estimate_deltas(model, t, n_train, **kw)
        if "table_one" in parts:
            entry["table_one"] = table_one(model, t, deltas[t.name], n_test, query_slots=table_slots, **kw)
        entries[t.name] = entry
    return deltas
