"""lmscope probes: reading vectors, steering evaluations and the alignment/helpfulness trade-off.

``reading`` projects activations on steering directions (RepE reading) and
reports per-layer separation; ``evals`` holds offline evaluations (behaviour
score, multiple choice) and their shipped data; ``tradeoff`` sweeps steering
scales and fits Wolf et al.'s curves.
"""

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

__all__ = [
    "AnswerEval", "BehaviourEval", "ChoiceEval", "Fit", "Separation", "TradeoffResult", "as_eval", "auroc",
    "fit_linear", "fit_quadratic", "fit_tanh", "fit_wolf_helpfulness", "load_pairs", "mcq_eval", "r_squared",
    "read", "read_jsonl", "sentiment_eval", "separation", "steering_tradeoff",
]
