"""Probe sweeps: planted features are recovered, the control task sits at chance, seeds fix results, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lmscope.interventions import HookedModel, write_dataset
from lmscope.interventions.errors import InputError
from lmscope.probes.linear import (
    control_labels,
    cross_validate,
    majority_baseline,
    probe_direction,
    probe_steer,
    probe_sweep,
    random_init_sweep,
)


def _planted(n: int = 160, d: int = 16, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Site ``a.0`` is noise; ``a.1`` holds the label along one direction; ``a.2`` holds it weakly."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    noise = lambda: rng.normal(size=(n, d))  # noqa: E731
    sign = 2 * y - 1
    data = {"a.0": noise(), "a.1": noise() + np.outer(2.5 * sign, w), "a.2": noise() + np.outer(0.5 * sign, w)}
    return data, y, w


def test_planted_feature_is_recovered_and_ordered() -> None:
    data, y, w = _planted()
    res = probe_sweep(data, y.tolist(), types=list(range(len(y))), cv=4)
    assert res["a.1"]["acc"] > 0.97 and res["a.1"]["auroc"] > 0.99
    assert 0.35 < res["a.0"]["acc"] < 0.65 and 0.3 < res["a.0"]["auroc"] < 0.7
    assert res["a.0"]["acc"] < res["a.2"]["acc"] < res["a.1"]["acc"]
    assert res.best("acc") == "a.1" and res["a.1"]["acc_std"] >= 0
    direction = probe_direction(data["a.1"], y.tolist())
    assert float(direction @ torch.tensor(w, dtype=torch.float32)) > 0.9  # the planted direction, positive class


def test_control_task_is_at_chance_on_random_data() -> None:
    rng = np.random.default_rng(1)
    n = 400
    data = {"r.0": rng.normal(size=(n, 8))}
    y = rng.integers(0, 2, n)
    types = rng.integers(0, 40, n).tolist()
    res = probe_sweep(data, y.tolist(), types=types, cv=5)
    # chance = the majority rate of each label set (control labels are drawn per type, so not exactly 50/50)
    assert abs(res["r.0"]["control_acc"] - res["r.0"]["control_chance"]) < 0.1
    assert abs(res["r.0"]["acc"] - 0.5) < 0.1
    assert abs(res["r.0"]["selectivity"]) < 0.15
    ctl = control_labels(types, y, seed=0)
    by_type = {}
    for t, c in zip(types, ctl):
        assert by_type.setdefault(t, c) == c  # one control label per word type


def test_control_task_is_memorisable_by_type_not_by_signal() -> None:
    """Types encoded in the activations: the control task is learnable, so selectivity < accuracy."""
    rng = np.random.default_rng(2)
    n, k = 300, 10
    types = rng.integers(0, k, n)
    X = np.eye(k)[types] * 3 + rng.normal(size=(n, k)) * 0.1
    y = rng.integers(0, 2, n)
    res = probe_sweep({"t.0": X}, y.tolist(), types=types.tolist(), cv=5)
    assert res["t.0"]["control_acc"] > 0.9 and res["t.0"]["selectivity"] < 0.1


def test_results_are_deterministic_given_a_seed() -> None:
    data, y, _ = _planted(n=120, seed=3)
    kw = dict(types=[i % 7 for i in range(120)], cv=3)
    a, b = probe_sweep(data, y.tolist(), seed=5, **kw), probe_sweep(data, y.tolist(), seed=5, **kw)
    assert a.rows == b.rows
    c = probe_sweep(data, y.tolist(), seed=6, **kw)
    assert a.rows != c.rows  # folds and control labels move with the seed


def test_any_fit_predict_estimator_and_string_labels() -> None:
    class Nearest:
        def fit(self, X, y):
            self.m = {c: X[y == c].mean(0) for c in np.unique(y)}
            return self

        def predict(self, X):
            keys = list(self.m)
            return np.array(keys)[np.argmin([[np.linalg.norm(x - self.m[k]) for k in keys] for x in X], 1)]

    data, y, _ = _planted(n=100)
    labels = ["plural" if v else "singular" for v in y]
    res = probe_sweep({"a.1": data["a.1"]}, labels, estimator=Nearest(), control=False, cv=4)
    assert res.classes == ["plural", "singular"] and res["a.1"]["acc"] > 0.95 and np.isnan(res["a.1"]["auroc"])
    assert majority_baseline(np.array([0, 0, 1])) == pytest.approx(2 / 3)


def test_bad_input() -> None:
    data, y, _ = _planted(n=50)
    with pytest.raises(InputError, match="no fit or predict|no predict"):
        probe_sweep(data, y.tolist(), estimator=object())
    with pytest.raises(InputError, match="no predict"):
        cross_validate(data["a.0"], y, estimator=type("E", (), {"fit": lambda self, X, y: self})())
    with pytest.raises(InputError, match="49 labels|50 rows"):
        probe_sweep(data, y.tolist()[:-1])
    one = [0] * 49 + [1]
    with pytest.raises(InputError, match="Class 1 has only 1 example"):
        probe_sweep(data, one)
    with pytest.raises(InputError, match="two classes"):
        probe_sweep(data, [0] * 50)
    with pytest.raises(InputError, match="No activations for 'b.0'"):
        probe_sweep(data, y.tolist(), sites=["b.0"])
    with pytest.raises(InputError, match="one type per row"):
        control_labels([1, 2], y)


def test_sweep_over_a_dataset_groups_rows_by_prompt(llama_tiny: HookedModel, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from lmscope.probes.linear import sweep

    folds_made = []
    make_folds = sweep._folds

    def recorded(y, groups, cv, seed):  # type: ignore[no-untyped-def]
        folds = make_folds(y, groups, cv, seed)
        folds_made.append((groups, folds))
        return folds
    monkeypatch.setattr(sweep, "_folds", recorded)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 90, rng.integers(3, 7)).tolist() for _ in range(30)]
    labels = [int(p[-1] > 45) for p in prompts]  # a property of the last token: recoverable from its embedding
    ds = write_dataset(llama_tiny, tmp_path, prompts, ["resid_post.*"], labels, "last")
    res = probe_sweep(ds, cv=3)
    assert [r["site"] for r in res.rows] == ds.sites and res.meta["n_rows"] == 30
    alls = write_dataset(llama_tiny, tmp_path / "all", prompts, ["resid_post.0"], labels, "all")
    folds_made.clear()
    res_all = probe_sweep(alls, cv=3)  # many rows per prompt: folds group by prompt (no leakage)
    assert res_all.meta["n_rows"] == alls.n_rows > 30
    groups, folds = folds_made[0]
    assert groups.tolist() == alls.prompt_index().tolist()
    for train, test in folds:  # no prompt has rows on both sides of a split
        assert not set(groups[train].tolist()) & set(groups[test].tolist())
    rand = random_init_sweep(llama_tiny, prompts, labels, ["resid_post.*"], cv=3, control=False)
    res.add_baseline("random_init", rand)
    assert "random_init_acc" in res.rows[0]
    fig = res.plot(tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 1000 and fig is not None
    direction = probe_direction(ds.array("resid_post.1"), ds.labels())
    out = llama_tiny.run(prompts[:2], [probe_steer("resid_post.1", direction, 2.0)])
    base = llama_tiny.run(prompts[:2])
    assert not torch.allclose(out.logits, base.logits)
