"""lmscope lenses: decode the residual stream of every layer into next-token predictions.

``LogitLens`` decodes with the model's own final norm + unembedding; ``TunedLens`` first applies a
learned affine translator per reading (both in ``lenses.py``). ``lens.decode(prompt)`` gives a
:class:`Trajectory` (tables, JSON, heatmaps); :class:`LensReadout` records lens predictions inside any
intervention session (decoding in ``decode.py``). KL, entropy, cross-entropy and bits/byte are computed
once, in :mod:`lmscope.lens.metrics`. Training, evaluation and the text corpus live in
:mod:`lmscope.lens.training`.
Depends on the core (:mod:`lmscope.interventions`) only.

Everything is imported lazily so that ``lmscope.lens.cli`` starts without importing torch/transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .lenses import Lens, LogitLens, TunedLens
    from .readout import LensReadout
    from .trajectory import Trajectory, TrajectoryBatch

__all__ = ["Lens", "LensReadout", "LogitLens", "Trajectory", "TrajectoryBatch", "TunedLens"]

_LAZY = {
    "Lens": ".lenses", "LogitLens": ".lenses", "TunedLens": ".lenses", "Trajectory": ".trajectory",
    "TrajectoryBatch": ".trajectory", "LensReadout": ".readout",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
