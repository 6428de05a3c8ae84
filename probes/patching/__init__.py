"""Activation patching: one generic sweep, ready-made sweeps and attribution patching.

``sweep`` holds :func:`patching_sweep` (exact batched sweep that reuses the unchanged prefix and the
layers below each patch, the one-forward-per-patch reference loop, and attribution patching through
one call) and the ready-made ``resid_pre``/``attn_out``/``mlp_out``/per-head sweeps; ``attribution``
the AtP estimate and its caveats; ``metrics`` logit-difference and log-prob metrics; ``result`` the
:class:`PatchingResult` map (JSON/safetensors/PNG); ``cli`` is ``lmscope patch``.
"""

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .attribution import LARGE_DELTA
    from .metrics import default_metric, logit_diff, target_logprob
    from .result import PatchingResult
    from .sweep import (
        Cell,
        attn_out_sweep,
        head_sweep,
        mlp_out_sweep,
        patching_sweep,
        resid_pre_sweep,
    )

_LAZY = {
    "Cell": ".sweep",
    "LARGE_DELTA": ".attribution",
    "PatchingResult": ".result",
    "attn_out_sweep": ".sweep",
    "default_metric": ".metrics",
    "head_sweep": ".sweep",
    "logit_diff": ".metrics",
    "mlp_out_sweep": ".sweep",
    "patching_sweep": ".sweep",
    "resid_pre_sweep": ".sweep",
    "target_logprob": ".metrics",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
