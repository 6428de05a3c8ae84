"""Direct logit attribution: a logit (difference) decomposed into per-head, per-MLP, embedding and bias terms.

``dla`` holds :func:`attribute` (final norm linearised with the run's own scale, so the terms sum exactly
to the model's logit; per-position head terms; one prompt or a dataset in one batch) and :func:`linearise_norm`;
``dataset`` the :class:`DatasetAttribution` of many prompts (mean ± standard error per term); ``request`` reads a
call's prompts, tokens and positions; ``neurons`` splits one MLP's term over its neurons
(:func:`neuron_attribution`); ``heads`` scores heads as previous-token, duplicate-token or induction heads
(:func:`head_scores`); ``plot`` draws the layer × head heat map; ``cli`` is ``lmscope attribute``.
"""

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .dataset import DatasetAttribution
    from .dla import Attribution, LinearNorm, attribute, linearise_norm
    from .heads import head_scores, head_scores_by_kind, pattern_scores, repeated_tokens
    from .neurons import NeuronAttribution, neuron_attribution
    from .plot import plot_attribution

_LAZY = {"Attribution": ".dla", "DatasetAttribution": ".dataset", "LinearNorm": ".dla", "attribute": ".dla",
         "linearise_norm": ".dla",
         "plot_attribution": ".plot", "head_scores": ".heads", "head_scores_by_kind": ".heads",
         "pattern_scores": ".heads", "repeated_tokens": ".heads", "NeuronAttribution": ".neurons",
         "neuron_attribution": ".neurons"}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
