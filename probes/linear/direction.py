"""A probe's weight vector as a residual-stream direction: steer along it, compare it with steering vectors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from lmscope.interventions.errors import InputError
from lmscope.interventions.steer import Steer

from .sweep import default_estimator, encode_labels

if TYPE_CHECKING:
    from lmscope.probes.steering import SteeringVector


def probe_direction(X: np.ndarray, labels: Sequence[Any], seed: int = 0, C: float = 1.0) -> torch.Tensor:
    """Unit direction ``[d]`` of a binary logistic probe in the *raw* activation basis.

    The default probe standardises features first; its weights ``w / scale`` map back to the residual
    stream, so that ``h + r * direction`` moves ``h`` towards the positive (second sorted) class.
    """
    y, classes = encode_labels(list(labels))
    if len(classes) != 2:
        raise InputError(f"A probe direction needs exactly two classes, got {len(classes)}: {classes}.")
    est = default_estimator(seed)
    est.set_params(logisticregression__C=C)
    est.fit(X, y)
    scaler, lr = est.steps[0][1], est.steps[1][1]
    w = lr.coef_[0] / scaler.scale_
    v = torch.tensor(w, dtype=torch.float32)
    return v / v.norm()


def probe_steer(site: str, direction: torch.Tensor, scale: float = 1.0, positions: Any = None) -> Steer:
    """A ``Steer`` adding ``scale * direction`` at ``site`` (the probe's positive class direction)."""
    return Steer(site, direction, scale, positions=positions)


def compare_with_steering(directions: Mapping[str, torch.Tensor], vector: SteeringVector) -> dict[str, float]:
    """Cosine similarity between probe directions (site -> ``[d]``) and a steering vector's, site by site.

    Only sites both cover are compared (through the steering package's public ``direction``).
    """
    out: dict[str, float] = {}
    for site, d in directions.items():
        if site in vector.sites:
            s = vector.direction(site)
            out[site] = float(torch.nn.functional.cosine_similarity(d.float(), s.float(), dim=0))
    if not out:
        raise InputError(f"No common site: probe directions at {list(directions)}, steering vector at {vector.sites}.")
    return out
