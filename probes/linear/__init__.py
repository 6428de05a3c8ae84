"""Linear probes over activation datasets: cross-validated sweeps per site with controls.

``sweep`` fits one probe per site (logistic regression by default, any fit/predict estimator) and reports
accuracy/AUROC with their spread, the Hewitt & Liang control task and selectivity, and the majority
baseline; ``controls`` adds the random-init-model baseline; ``direction`` turns a probe into a ``Steer``
and compares it with :mod:`lmscope.probes.steering` vectors; ``plot`` draws the per-layer figure;
``cli`` is ``lmscope probe``. Activations come from :mod:`lmscope.interventions.datasets`.
"""

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .controls import random_init_model, random_init_sweep
    from .direction import compare_with_steering, probe_direction, probe_steer
    from .plot import plot_sweep
    from .sweep import (
        SweepResult,
        check_estimator,
        control_labels,
        cross_validate,
        default_estimator,
        encode_labels,
        majority_baseline,
        probe_sweep,
    )

_LAZY = {
    "random_init_model": ".controls", "random_init_sweep": ".controls", "compare_with_steering": ".direction",
    "probe_direction": ".direction", "probe_steer": ".direction", "plot_sweep": ".plot", "SweepResult": ".sweep",
    "check_estimator": ".sweep", "control_labels": ".sweep", "cross_validate": ".sweep",
    "default_estimator": ".sweep", "encode_labels": ".sweep", "majority_baseline": ".sweep", "probe_sweep": ".sweep",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
