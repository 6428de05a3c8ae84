"""Prediction-trajectory anomaly detection (Belrose et al. 2023, "Eliciting latent predictions", sec. 6).

A prompt's *prediction trajectory* is what a lens reads at its last token, layer by layer. Features per
reading: the lens log-probability of the model's final top-1 token (``"answer"``), and with
``features="full"`` also the lens entropy and the KL divergence from the model's final distribution.
An Isolation Forest or a Local Outlier Factor (scikit-learn) is fitted on normal prompts only; new
prompts get an anomaly score (higher = more anomalous), and :func:`anomaly_auroc` measures separation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.progress import bar_disable
from lmscope.interventions.specs import as_prompt_list

if TYPE_CHECKING:
    from lmscope.lens import Lens

METHODS = ("iforest", "lof")
FEATURES = ("answer", "full")


def trajectory_features(lens: Lens, prompts: Sequence[Any], features: str = "full", batch_size: int = 16,
                        layers: Any = None, progress: bool | None = None) -> np.ndarray:
    """``[n_prompts, n_features]`` per-reading features of each prompt's last-token trajectory.

    ``layers`` picks readings (layer numbers or reading names, as :meth:`Lens.select_readings`; default
    all): each reading costs one full-vocabulary decode per prompt.
    """
    if features not in FEATURES:
        raise InputError(f"features must be one of {', '.join(FEATURES)}, got {features!r}.")
    from tqdm.auto import tqdm

    items = as_prompt_list(prompts, "prompts")
    model = lens.model
    chosen = [(i, lens.readings[i]) for i in lens.select_readings(layers)]
    rows = []
    show = len(items) > 4 * batch_size if progress is None else progress
    for b in tqdm(range(0, len(items), batch_size), desc="trajectories", disable=bar_disable(show), leave=False):
        res = model.run(items[b:b + batch_size], [Cache([name for _, name in chosen], positions=-1)])
        final = torch.log_softmax(res.last_logits().float(), -1)
        answer = final.argmax(-1)
        cols = []
        with torch.no_grad():
            for i, name in chosen:
                lp = torch.log_softmax(lens.logits(res.cache[name][:, 0], i).float(), -1)
                cols.append(lp.gather(1, answer[:, None])[:, 0])
                if features == "full":
                    p = lp.exp()
                    cols.append(-(p * lp).sum(-1))
                    cols.append((final.exp() * (final - lp)).sum(-1))
        rows.append(torch.stack(cols, 1).cpu())  # features are small: keep them on the host
    return torch.cat(rows).numpy()


class TrajectoryDetector:
    """Anomaly detector over lens trajectories: ``fit`` on normal prompts, ``score`` new ones.

    ``method``: ``"iforest"`` (Isolation Forest, default) or ``"lof"`` (Local Outlier Factor in novelty
    mode). ``fit``/``score`` take prompts (features are computed with ``lens``) or a ready feature array.
    """

    def __init__(self, lens: Lens | None = None, method: str = "iforest", features: str = "full", seed: int = 0,
                 layers: Any = None, **estimator_kwargs: Any) -> None:
        if method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
        if features not in FEATURES:
            raise InputError(f"features must be one of {', '.join(FEATURES)}, got {features!r}.")
        self.lens, self.method, self.features, self.seed, self.layers = lens, method, features, seed, layers
        self.kwargs = estimator_kwargs
        self.estimator: Any = None
        self.n_features: int | None = None

    def _x(self, data: Any) -> np.ndarray:
        if isinstance(data, np.ndarray):
            if data.ndim != 2:
                raise InputError(f"Feature arrays must be [n, features], got shape {data.shape}.")
            return data.astype(np.float64)
        if self.lens is None:
            raise InputError("This detector has no lens: pass feature arrays, or build it with a lens.")
        return trajectory_features(self.lens, data, self.features, layers=self.layers).astype(np.float64)

    def fit(self, normal: Any) -> TrajectoryDetector:
        """Fit on normal prompts (or their features); needs at least 2 examples."""
        X = self._x(normal)
        if X.shape[0] < 2:
            raise InputError("Fit the detector on at least two normal examples.")
        if self.method == "iforest":
            from sklearn.ensemble import IsolationForest

            self.estimator = IsolationForest(random_state=self.seed, **self.kwargs).fit(X)
        else:
            from sklearn.neighbors import LocalOutlierFactor

            kw = {"n_neighbors": min(20, X.shape[0] - 1), **self.kwargs}
            self.estimator = LocalOutlierFactor(novelty=True, **kw).fit(X)
        self.n_features = X.shape[1]
        return self

    def score(self, data: Any) -> np.ndarray:
        """Anomaly score per example (higher = more anomalous than the normal prompts)."""
        if self.estimator is None:
            raise InputError("Call fit(normal_prompts) before score().")
        X = self._x(data)
        if X.shape[1] != self.n_features:
            raise InputError(f"Got {X.shape[1]} features; the detector was fitted on {self.n_features}.")
        return -self.estimator.score_samples(X)


def anomaly_auroc(normal_scores: Sequence[float], anomalous_scores: Sequence[float]) -> float:
    """AUROC of separating anomalous from normal examples by score (0.5 = chance)."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(normal_scores)), np.ones(len(anomalous_scores))]
    return float(roc_auc_score(y, np.r_[normal_scores, anomalous_scores]))


def roc_curve(normal_scores: Sequence[float], anomalous_scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the score threshold sweep (for plotting)."""
    from sklearn.metrics import roc_curve as _roc

    y = np.r_[np.zeros(len(normal_scores)), np.ones(len(anomalous_scores))]
    fpr, tpr, _ = _roc(y, np.r_[normal_scores, anomalous_scores])
    return fpr, tpr
