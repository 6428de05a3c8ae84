"""Probe sweeps: one cross-validated classifier per site, with the controls that make accuracy mean something.

For each site the sweep reports accuracy and AUROC (mean and standard deviation over folds), the accuracy
of the same probe on a *control task* (random labels assigned per word type, Hewitt & Liang 2019), the
selectivity ``accuracy - control accuracy`` and the majority-class baseline. Rows that come from the same
prompt stay in the same fold (grouped cross-validation), so a probe never sees a prompt it is scored on.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from lmscope.interventions.errors import InputError
from lmscope.interventions.progress import bar_disable

if TYPE_CHECKING:
    from lmscope.interventions.datasets import ActivationDataset


def default_estimator(seed: int = 0) -> Any:
    """Standardised logistic regression (residual streams have a few huge dimensions; scaling fixes lbfgs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))


def check_estimator(estimator: Any) -> None:
    """Refuse anything without callable ``fit`` and ``predict`` (the whole contract a probe needs)."""
    missing = [m for m in ("fit", "predict") if not callable(getattr(estimator, m, None))]
    if missing:
        raise InputError(f"The estimator {type(estimator).__name__} has no {' or '.join(missing)} method; a probe "
                         "needs an object with fit(X, y) and predict(X) (any scikit-learn classifier works).")


def _fresh(estimator: Any, seed: int) -> Any:
    try:
        from sklearn.base import clone

        est = clone(estimator)
    except (TypeError, ValueError, RuntimeError):
        est = copy.deepcopy(estimator)
    params = est.get_params() if hasattr(est, "get_params") else {}
    seeds = {k: seed for k in params if k == "random_state" or k.endswith("__random_state")}
    if seeds:
        est.set_params(**seeds)
    return est


def encode_labels(labels: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Labels (ints, strings...) to class indices ``0..k-1`` and the sorted class list."""
    classes = sorted(set(labels), key=lambda v: (str(type(v)), v))
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[v] for v in labels], dtype=np.int64), classes


def control_labels(types: Sequence[Any], y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang's control task: every word type gets one random label, drawn from the label distribution.

    A probe that reaches high accuracy on it memorises types instead of reading a property.
    """
    if len(types) != len(y):
        raise InputError(f"There are {len(types)} word types for {len(y)} rows; give one type per row.")
    rng = np.random.default_rng(seed)
    uniq = sorted(set(types), key=repr)
    drawn = rng.choice(y, size=len(uniq), replace=True)
    table = dict(zip(uniq, drawn))
    return np.array([table[t] for t in types], dtype=np.int64)


def majority_baseline(y: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent class."""
    return float(np.bincount(y).max() / len(y))


def _folds(y: np.ndarray, groups: np.ndarray | None, cv: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = np.bincount(y)
    if len(counts) < 2:
        raise InputError("A probe needs at least two classes; every row has the same label.")
    if cv < 2:
        raise InputError(f"cv must be at least 2 folds, got {cv}.")
    if counts.min() < cv:
        raise InputError(f"Class {int(counts.argmin())} has only {int(counts.min())} example(s); {cv}-fold "
                         f"cross-validation needs at least {cv} per class (add examples or lower cv).")
    if groups is not None and len(np.unique(groups)) < len(groups):
        splitter: Any = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y, groups))
    return list(StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _scores(est: Any, X: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    if n_classes == 2 and hasattr(est, "decision_function"):
        return float(roc_auc_score(y, est.decision_function(X)))
    if hasattr(est, "predict_proba"):
        p = est.predict_proba(X)
        if n_classes == 2:
            return float(roc_auc_score(y, p[:, 1]))
        if len(np.unique(y)) == n_classes:
            return float(roc_auc_score(y, p, multi_class="ovr", labels=list(range(n_classes))))
    return float("nan")


def cross_validate(X: np.ndarray, y: np.ndarray, estimator: Any = None, folds: Any = None, cv: int = 5, seed: int = 0,
                   groups: np.ndarray | None = None, blas_threads: int | None = 1) -> dict[str, float]:
    """Cross-validated accuracy and AUROC (mean and std over folds) of one probe on ``X [n, d]``, ``y [n]``.

    ``blas_threads`` limits BLAS/OpenMP threads during the fits (1 by default; None leaves them alone).
    """
    est0 = default_estimator(seed) if estimator is None else estimator
    check_estimator(est0)
    if X.shape[0] != len(y):
        raise InputError(f"X has {X.shape[0]} rows but there are {len(y)} labels.")
    folds = _folds(y, groups, cv, seed) if folds is None else folds
    n_classes = int(y.max()) + 1
    acc, auc = [], []
    from threadpoolctl import threadpool_limits

    with threadpool_limits(blas_threads):  # small dense problems: BLAS threads only contend
        for train, test in folds:
            est = _fresh(est0, seed)
            est.fit(X[train], y[train])
            acc.append(float(np.mean(np.asarray(est.predict(X[test])) == y[test])))
            auc.append(_scores(est, X[test], y[test], n_classes))
    auc_arr = np.array(auc)
    ok = ~np.isnan(auc_arr)
    return {"acc": float(np.mean(acc)), "acc_std": float(np.std(acc)),
            "auroc": float(auc_arr[ok].mean()) if ok.any() else float("nan"),
            "auroc_std": float(auc_arr[ok].std()) if ok.any() else float("nan")}


@dataclass
class SweepResult:
    """One row per site: ``acc``, ``acc_std``, ``auroc``, ``auroc_std``, ``control_acc``, ``selectivity``,
    ``control_chance`` (majority rate of the control labels), ``majority``
    (and ``<name>_acc`` for every baseline added with :meth:`add_baseline`)."""

    rows: list[dict[str, Any]]
    classes: list[Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, site: str) -> dict[str, Any]:
        for r in self.rows:
            if r["site"] == site:
                return r
        raise InputError(f"No row for site {site!r}; the sweep covers {', '.join(r['site'] for r in self.rows)}.")

    def column(self, key: str) -> list[float]:
        return [float(r.get(key, float("nan"))) for r in self.rows]

    def best(self, key: str = "selectivity") -> str:
        """The site with the highest ``key`` (selectivity by default)."""
        vals = np.nan_to_num(np.array(self.column(key)), nan=-np.inf)
        return str(self.rows[int(np.argmax(vals))]["site"])

    def add_baseline(self, name: str, other: SweepResult) -> None:
        """Attach another sweep's accuracy (e.g. the random-init model) as ``<name>_acc`` per site
        (NaN where ``other`` did not probe the site)."""
        theirs = {r["site"]: r["acc"] for r in other.rows}
        for r in self.rows:
            r[f"{name}_acc"] = theirs.get(r["site"], float("nan"))

    def to_markdown(self, digits: int = 3) -> str:
        keys = [k for k in self.rows[0] if k != "site"]
        lines = ["| site | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for r in self.rows:
            lines.append(f"| {r['site']} | " + " | ".join(f"{r[k]:.{digits}f}" for k in keys) + " |")
        return "\n".join(lines)

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        text = json.dumps({"rows": self.rows, "classes": self.classes, "meta": self.meta}, indent=1, default=str)
        if path is not None:
            from lmscope.interventions.artifacts import atomic_write_text

            atomic_write_text(path, text)
        return text

    def plot(self, path: str | os.PathLike[str] | None = None, title: str | None = None) -> Any:
        from .plot import plot_sweep

        return plot_sweep(self, path, title)


def probe_sweep(data: ActivationDataset | Mapping[str, np.ndarray], labels: Sequence[Any] | None = None,
                sites: Sequence[str] | None = None, estimator: Any = None, cv: int = 5, seed: int = 0,
                control: bool = True, types: Sequence[Any] | None = None, groups: Sequence[Any] | None = None,
                progress: bool | None = None) -> SweepResult:
    """Cross-validated probes at every site of ``data`` (an :class:`ActivationDataset` or site -> ``[n, d]``).

    From a dataset, ``labels`` default to the prompts' labels, ``types`` (control task word types) to the
    token id of each row and ``groups`` to the prompt of each row. ``control=False`` skips the control task.
    The same folds serve every site and the control task, so differences between rows are the sites'.
    """
    from lmscope.interventions.datasets import ActivationDataset

    check_estimator(default_estimator(seed) if estimator is None else estimator)
    if isinstance(data, ActivationDataset):
        labels = data.labels() if labels is None else labels
        types = list(data.token_ids().tolist()) if types is None else types
        groups = list(data.prompt_index().tolist()) if groups is None else groups
        names = data.sites if sites is None else list(sites)
        for s in names:
            data.require(s)
        load: Any = data.array
    else:
        names = list(data) if sites is None else list(sites)
        missing = [s for s in names if s not in data]
        if missing:
            raise InputError(f"No activations for {missing[0]!r}; the data holds {', '.join(data)}.")
        load = lambda s: np.asarray(data[s], dtype=np.float32)  # noqa: E731
    if labels is None:
        raise InputError("probe_sweep needs labels (one per row).")
    y, classes = encode_labels(list(labels))
    g = None if groups is None else np.asarray(groups)
    if g is not None and len(g) != len(y):
        raise InputError(f"There are {len(g)} groups for {len(y)} rows.")
    folds = _folds(y, g, cv, seed)
    y_ctl = control_labels(list(types) if types is not None else list(range(len(y))), y, seed) if control else None
    ctl_folds = _folds(y_ctl, g, cv, seed) if y_ctl is not None and np.bincount(y_ctl).min() >= cv \
        and len(np.unique(y_ctl)) > 1 else None
    from tqdm.auto import tqdm

    rows = []
    for s in tqdm(names, desc="probe sweep", disable=bar_disable(len(names) > 4 if progress is None else progress),
                  leave=False):
        X = load(s)
        if X.shape[0] != len(y):
            raise InputError(f"{s} has {X.shape[0]} rows but there are {len(y)} labels.")
        row: dict[str, Any] = {"site": s, **cross_validate(X, y, estimator, folds, cv, seed)}
        if y_ctl is not None:
            row["control_acc"] = cross_validate(X, y_ctl, estimator, ctl_folds, cv, seed)["acc"] \
                if ctl_folds is not None else majority_baseline(y_ctl)
            row["selectivity"] = row["acc"] - row["control_acc"]
            row["control_chance"] = majority_baseline(y_ctl)
        row["majority"] = majority_baseline(y)
        rows.append(row)
    return SweepResult(rows, classes, {"cv": cv, "seed": seed, "n_rows": int(len(y)),
                                       "estimator": type(estimator).__name__ if estimator is not None
                                       else "StandardScaler+LogisticRegression"})
