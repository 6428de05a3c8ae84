"""Binding IDs (Feng & Steinhardt, arXiv 2310.17191): tasks, factorization, position independence, mean
interventions (Δ_E, Δ_A), the binding-ID subspace, and a one-call study.

``tasks``/``prompts`` build prompts with exact token spans; ``runs`` scores candidate attributes under
interventions with the context frozen (``frozen``), by the full prompt or over a context KV cache
(``contexts``: the context forwards, ``kvpath``: the question forwards, ``planner``: which context tokens a
condition rewrites, or why it runs the full prompt); ``metrics`` turns scores into raw and calibrated
accuracy; ``experiments`` holds the baseline, the factorization test (core ``Patch`` with
``source_positions``) and position shifts (``position_ids``, or keys only: ``keyshift``); ``shift`` is the
``BindingShift`` intervention; ``means`` estimates Δ and runs Table 1, transfer and the subspace grid;
``patching`` the resid_pre x position patching map of one pair; ``study`` runs everything into one JSON-able
report. docs/binding.md describes the experiments and the two scoring paths.
"""

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .contexts import ContextMemo
    from .experiments import baseline, factorization, position_shift, predicted_binding, swap_patch
    from .frozen import FrozenContext
    from .means import BindingDeltas, estimate_deltas, subspace, table_one, transfer
    from .metrics import accuracy, attribute_medians, calibrated_accuracy
    from .patching import binding_patching, patching_pair
    from .prompts import BindingPrompt, Context, build_prompt, sample_contexts
    from .runs import candidate_logprobs, score, score_many
    from .shift import BindingShift, random_like
    from .study import PAPER, binding_study
    from .tasks import SHIPPED, BindingTask, load_task, split_pool

_LAZY = {
    "baseline": ".experiments", "factorization": ".experiments", "position_shift": ".experiments",
    "predicted_binding": ".experiments", "swap_patch": ".experiments",
    "BindingDeltas": ".means", "estimate_deltas": ".means", "subspace": ".means", "table_one": ".means",
    "transfer": ".means",
    "binding_patching": ".patching", "patching_pair": ".patching",
    "BindingPrompt": ".prompts", "Context": ".prompts", "build_prompt": ".prompts", "sample_contexts": ".prompts",
    "ContextMemo": ".contexts", "FrozenContext": ".frozen",
    "accuracy": ".metrics", "attribute_medians": ".metrics", "calibrated_accuracy": ".metrics",
    "candidate_logprobs": ".runs", "score": ".runs", "score_many": ".runs",
    "BindingShift": ".shift", "random_like": ".shift", "PAPER": ".study", "binding_study": ".study",
    "SHIPPED": ".tasks", "BindingTask": ".tasks", "load_task": ".tasks", "split_pool": ".tasks",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
