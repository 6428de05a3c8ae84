"""Overthinking and false-induction heads (Halawi, Denain, Steinhardt, arXiv 2307.09476).

``tasks`` builds few-shot prompts (true / permuted / half / random demo labels); ``readings`` reads label
probabilities at every layer through the logit and tuned lenses; ``metrics`` has accuracy, calibrated
accuracy, the critical layer and the gap reduction; ``heads`` scores every head (false induction, prefix
matching) from one forward per batch and picks the top and random heads; ``ablation`` holds the head ablations
at the final token (zero, mean, and the authors' q/k/v variant :class:`HeadQKVAblate`); ``final_token`` runs
them (:func:`final_label_probs`: the prefix once, the final token per configuration batch);
``study.run_study`` runs everything; ``cli`` is ``lmscope overthinking``.
"""

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .ablation import HeadQKVAblate, head_ablation
    from .final_token import final_label_probs
    from .heads import batched_head_scores, naive_head_scores, random_head_sets, top_heads
    from .metrics import CriticalLayer, accuracy, calibrated_accuracy, critical_layer, gap_reduction
    from .readings import LabelReadings, label_logits, read_labels
    from .study import OverthinkingReport, run_study
    from .tasks import SETTINGS, FewShotTask, PromptSet, build_prompts, load_task, shown_labels, task_names

_LAZY = {
    "CriticalLayer": ".metrics",
    "FewShotTask": ".tasks",
    "HeadQKVAblate": ".ablation",
    "LabelReadings": ".readings",
    "OverthinkingReport": ".study",
    "PromptSet": ".tasks",
    "SETTINGS": ".tasks",
    "accuracy": ".metrics",
    "batched_head_scores": ".heads",
    "build_prompts": ".tasks",
    "calibrated_accuracy": ".metrics",
    "critical_layer": ".metrics",
    "final_label_probs": ".final_token",
    "gap_reduction": ".metrics",
    "head_ablation": ".ablation",
    "label_logits": ".readings",
    "load_task": ".tasks",
    "naive_head_scores": ".heads",
    "random_head_sets": ".heads",
    "read_labels": ".readings",
    "run_study": ".study",
    "shown_labels": ".tasks",
    "task_names": ".tasks",
    "top_heads": ".heads",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
