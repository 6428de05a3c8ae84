"""lmscope lenses: decode the residual stream of every layer into next-token predictions.

``LogitLens`` decodes with the model's own final norm + unembedding; ``TunedLens`` first applies a
learned affine translator per reading. ``lens.decode(prompt)`` gives a :class:`Trajectory` (tables,
JSON, heatmaps); :class:`LensReadout` records lens predictions inside any intervention session.

Everything is imported lazily so that ``lens.cli`` starts without importing torch/transformers;
``train_tuned_lens``/``default_lens``/``evaluate_lens`` resolve once ``lens.train``/``lens.evaluate`` exist.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .logit import LogitLens
    from .readout import LensReadout
    from .trajectory import Trajectory, TrajectoryBatch
    from .tuned import TunedLens

__all__ = ["LensReadout", "LogitLens", "Trajectory", "TrajectoryBatch", "TunedLens"]

_LAZY = {
    "LogitLens": "logit", "TunedLens": "tuned", "Trajectory": "trajectory", "TrajectoryBatch": "trajectory",
    "LensReadout": "readout", "train_tuned_lens": "train", "default_lens": "train", "evaluate_lens": "evaluate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
