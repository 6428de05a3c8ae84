"""Activation patching: one generic sweep, ready-made sweeps and attribution patching.

``sweep`` holds :func:`patching_sweep` (every method through one call) and the ready-made
``resid_pre``/``attn_out``/``mlp_out``/per-head/per-neuron sweeps; ``pairs`` tokenises the prompt pairs and plans the
grid of cells; ``exact`` is the batched engine that reuses the unchanged prefix and the layers below each
patch; ``loop`` the one-forward-per-patch reference; ``attribution`` the AtP estimate and its caveats (the
cells outside the linear regime); ``combine`` turns a dataset of pairs into one map (mean, per pair; the result
derives paired standard errors); ``metrics`` logit-difference and log-prob metrics, ``scoring`` how a sweep applies
them; ``result`` the :class:`PatchingResult` map (JSON/safetensors/PNG); ``cli`` is ``lmscope patch``.

Imports run one way: ``sweep`` uses the method modules (``exact``, ``loop``, ``attribution``, which uses
``exact``'s row writer), and they use ``pairs`` and ``scoring``; no module imports ``sweep`` back.
"""

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .attribution import LARGE_CHANGE, LARGE_DELTA
    from .metrics import default_metric, logit_diff, target_logprob
    from .pairs import Cell
    from .result import PatchingResult
    from .sweep import (
        attn_out_sweep,
        head_sweep,
        mlp_out_sweep,
        neuron_sweep,
        patching_sweep,
        resid_pre_sweep,
    )

_LAZY = {
    "Cell": ".pairs",
    "LARGE_CHANGE": ".attribution",
    "LARGE_DELTA": ".attribution",
    "PatchingResult": ".result",
    "attn_out_sweep": ".sweep",
    "default_metric": ".metrics",
    "head_sweep": ".sweep",
    "logit_diff": ".metrics",
    "mlp_out_sweep": ".sweep",
    "neuron_sweep": ".sweep",
    "patching_sweep": ".sweep",
    "resid_pre_sweep": ".sweep",
    "target_logprob": ".metrics",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
