"""Prediction-trajectory anomaly detection: lens trajectories -> Isolation Forest / LOF fitted on normal prompts.

``detector`` computes per-reading lens features and holds :class:`TrajectoryDetector` and
:func:`anomaly_auroc`; ``injection`` ships the worked example (prompt injection vs plain prompts).
"""

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .detector import TrajectoryDetector, anomaly_auroc, roc_curve, trajectory_features
    from .injection import load_injection_example

_LAZY = {"TrajectoryDetector": ".detector", "anomaly_auroc": ".detector", "roc_curve": ".detector",
         "trajectory_features": ".detector", "load_injection_example": ".injection"}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
