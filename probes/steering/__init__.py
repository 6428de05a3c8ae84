"""Activation steering: vectors from contrast pairs, reading vectors, evaluations, the trade-off sweep.

``vectors`` holds :class:`SteeringVector`: built from contrast pairs by the methods of ``methods``
(mean/CAA, ActAdd, PCA/RepE, logistic), turned into ``Steer`` interventions, saved and loaded; ``reading``
projects activations on steering directions (RepE reading) and reports per-layer separation; ``evals`` holds
offline evaluations (behaviour score, multiple choice) and their shipped data; ``scale`` gives scales a unit
(the layer's typical residual norm); ``generation`` tabulates steered texts over scales x prompts;
``tradeoff`` sweeps steering scales and fits Wolf et al.'s curves; ``cli`` is ``lmscope steer``.
"""

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .evals import (
        AnswerEval,
        BehaviourEval,
        ChoiceEval,
        as_eval,
        load_pairs,
        mcq_eval,
        read_jsonl,
        sentiment_eval,
    )
    from .generation import GenerationSweep, generation_sweep
    from .methods import METHODS
    from .reading import Separation, auroc, read, separation
    from .tradeoff import (
        Fit,
        TradeoffResult,
        fit_linear,
        fit_quadratic,
        fit_tanh,
        fit_wolf_helpfulness,
        r_squared,
        steering_tradeoff,
    )
    from .vectors import SteeringVector

_LAZY = {
    "AnswerEval": ".evals",
    "BehaviourEval": ".evals",
    "ChoiceEval": ".evals",
    "Fit": ".tradeoff",
    "GenerationSweep": ".generation",
    "METHODS": ".methods",
    "Separation": ".reading",
    "SteeringVector": ".vectors",
    "TradeoffResult": ".tradeoff",
    "as_eval": ".evals",
    "auroc": ".reading",
    "fit_linear": ".tradeoff",
    "fit_quadratic": ".tradeoff",
    "fit_tanh": ".tradeoff",
    "fit_wolf_helpfulness": ".tradeoff",
    "generation_sweep": ".generation",
    "load_pairs": ".evals",
    "mcq_eval": ".evals",
    "r_squared": ".tradeoff",
    "read": ".reading",
    "read_jsonl": ".evals",
    "sentiment_eval": ".evals",
    "separation": ".reading",
    "steering_tradeoff": ".tradeoff",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
