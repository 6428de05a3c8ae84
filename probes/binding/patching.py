"""A ``resid_pre`` x position activation-patching map of one binding prompt pair.

Clean: a prompt querying slot 0 (right answer: slot 0's attribute A0). Corrupt: the same context with the two
attributes exchanged (same entities, same query), so the right answer becomes the other attribute. Metric: the
logit difference ``logit[answer of A0] - logit[answer of A1]`` at the last position (A0/A1 named in the *clean*
context), positive when the model answers the clean prompt right. The map is the generic
:func:`lmscope.probes.patching.patching_sweep` (denoising: each cell writes the clean ``resid_pre`` at one
layer and one token into the corrupt run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.errors import InputError
from lmscope.interventions.numbers import float32_clean, float32_clean_all

from .prompts import BindingPrompt, Context, build_prompt, sample_contexts
from .tasks import BindingTask

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


def patching_pair(model: HookedModel, task: BindingTask, *, split: str = "test", seed: int = 0,
                  tries: int = 64) -> tuple[BindingPrompt, BindingPrompt]:
    """(clean, corrupt): the first sampled two-entity context whose attribute-exchanged twin has the same token
    length (patching pairs token i with token i)."""
    for ctx in sample_contexts(model.tokenizer, task, tries, split=split, n_entities=2, seed=seed):
        clean = build_prompt(model.tokenizer, task, ctx, 0)
        corrupt = build_prompt(model.tokenizer, task, Context(ctx.entities, ctx.attributes[::-1]), 0)
        if len(clean.ids) == len(corrupt.ids):
            return clean, corrupt
    raise InputError(f"Task {task.name!r}: none of {tries} sampled contexts keeps its token length when its two "
                     "attributes are exchanged; a patching pair needs equal lengths.")


def binding_patching(model: HookedModel, task: BindingTask, *, split: str = "test", seed: int = 0,
                     method: str = "exact", batch_size: int = 16, progress: bool = False) -> dict[str, Any]:
    """The ``resid_pre`` x position patching map of one CAPITALS-style pair, as a JSON-able dict.

    ``values[layer][position]``: the metric of the corrupt run with the clean ``resid_pre.<layer>`` written at
    that one token. ``clean_metric``/``corrupt_metric``: the unpatched runs. Cells before the first token where
    the prompts differ equal ``corrupt_metric`` (nothing there differs); patching every token of
    ``resid_pre.0`` at once gives ``clean_metric``.
    """
    from lmscope.probes.patching import logit_diff, patching_sweep

    clean, corrupt = patching_pair(model, task, split=split, seed=seed)
    a0, a1 = clean.candidates  # answer tokens of A0 and A1 (the clean context's slots)
    metric = logit_diff(model, a0, a1)
    res = patching_sweep(model, torch.tensor([clean.ids]), torch.tensor([corrupt.ids]), "resid_pre.*", None,
                         metric, method=method, batch_size=batch_size, progress=progress)
    tok = model.tokenizer
    return {
        "task": task.name, "site": "resid_pre", "method": res.method, "direction": res.direction,
        "metric": "logit[answer of A0] - logit[answer of A1] (A0 = the queried slot-0 attribute of the clean prompt)",
        "clean_context": {"entities": list(clean.context.entities), "attributes": list(clean.context.attributes)},
        "corrupt_context": {"entities": list(corrupt.context.entities),
                            "attributes": list(corrupt.context.attributes)},
        "clean_text": clean.text, "corrupt_text": corrupt.text,
        "answer_tokens": [tok.decode([a0]), tok.decode([a1])],
        "values": float32_clean_all(res.values.tolist()), "layers": list(res.row_labels),
        "tokens": [tok.decode([i]) for i in clean.ids],
        "corrupt_tokens": [tok.decode([i]) for i in corrupt.ids],
        "differing_positions": [i for i, (a, b) in enumerate(zip(clean.ids, corrupt.ids)) if a != b],
        "entity_spans": [list(s) for s in clean.entity_spans],
        "attribute_spans": [list(s) for s in clean.attribute_spans],
        "context_len": clean.context_len,
        "clean_metric": float32_clean(res.source_metric), "corrupt_metric": float32_clean(res.base_metric),
    }
