"""Direct logit attribution: a logit (difference) decomposed into per-head, per-MLP, embedding and bias terms.

``dla`` holds :func:`attribute` (final norm linearised with the run's own scale, so the terms sum exactly
to the model's logit; per-position head terms) and :func:`linearise_norm`; ``plot`` draws the
layer × head heat map; ``cli`` is ``lmscope attribute``.
"""

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .dla import Attribution, LinearNorm, attribute, linearise_norm
    from .plot import plot_attribution

_LAZY = {"Attribution": ".dla", "LinearNorm": ".dla", "attribute": ".dla", "linearise_norm": ".dla",
         "plot_attribution": ".plot"}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
