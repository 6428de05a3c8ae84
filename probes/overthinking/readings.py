"""Label probabilities per layer at every k-shot position, from one forward per prompt batch.

At each position before a label (and at the query's last token) the lens reads every layer's
``resid_post``; only the label tokens' logits are decoded (the model's final norm, then the unembedding
rows of the label tokens), and a softmax over them renormalises the label probabilities over the label
set -- the same numbers as the full-vocabulary probabilities renormalised. The same forward can also
record the attention patterns the head scores need (only at those query positions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.progress import bar_disable

from .heads import HeadScoreSums, accumulate_head_scores
from .tasks import batches

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel
    from lmscope.lens import Lens

    from .tasks import PromptSet


def label_logits(lens: Lens, h: torch.Tensor, reading: int, label_ids: Sequence[int]) -> torch.Tensor:
    """Lens logits of ``h [..., d_model]`` at ``reading`` restricted to ``label_ids``: ``[..., n_labels]``.

    Equal to ``lens.logits(h, reading)[..., label_ids]`` without decoding the whole vocabulary.
    """
    model = lens.model
    x = model.final_norm(lens.translate(h, reading).to(model.dtype))
    idx = torch.as_tensor(list(label_ids), device=x.device)
    out = x @ model.unembed_weight[idx].T
    bias = getattr(model.unembed, "bias", None)
    if bias is not None:
        out = out + bias[idx]
    cap = getattr(model.hf_model.config, "final_logit_softcapping", None)
    return torch.tanh(out / cap) * cap if cap else out


@dataclass
class LabelReadings:
    """``probs[lens]``: ``[n_layers, n_prompts, n_demos + 1, n_labels]`` label probabilities (renormalised)."""

    probs: dict[str, torch.Tensor]
    heads: HeadScoreSums | None = None


@torch.no_grad()
def read_labels(model: HookedModel, prompts: PromptSet, lenses: dict[str, Lens], *, batch_size: int = 8,
                head_scores: bool = False, progress: bool = True, desc: str = "lens readings") -> LabelReadings:
    """Lens label probabilities of ``prompts`` at every layer and k-shot position (one forward per batch).

    With ``head_scores=True`` the same forward caches ``attn_pattern.*`` at the query positions and
    accumulates every head's false-induction and prefix-matching scores (:mod:`.heads`).
    """
    from tqdm.auto import tqdm

    if not lenses:
        raise InputError("read_labels needs at least one lens.")
    for name, lens in lenses.items():
        if lens.model is not model:
            raise InputError(f"Lens {name!r} belongs to another model.")
        if "resid_post" not in lens.site_kinds:
            raise InputError(f"Lens {name!r} does not read resid_post.")
    L = model.n_layers
    probs: dict[str, list[Any]] = {name: [] for name in lenses}
    sums = HeadScoreSums.empty(L, model.n_heads) if head_scores else None
    sites = ["resid_post.*"] + (["attn_pattern.*"] if head_scores else [])
    for rows in tqdm(batches(len(prompts), batch_size), desc=desc, disable=bar_disable(progress), leave=False):
        ids = [prompts.ids[i] for i in rows]
        qpos = [prompts.query_pos[i] for i in rows]
        res = model.run(ids, [Cache(sites, positions=qpos)])
        for name, lens in lenses.items():
            per_layer = [label_logits(lens, res.cache[f"resid_post.{layer}"],
                                      lens.reading_index(f"resid_post.{layer}"), prompts.label_ids)
                         for layer in range(L)]
            probs[name].append(torch.stack(per_layer).float().softmax(-1).cpu())
        if sums is not None:
            accumulate_head_scores(sums, res, prompts.subset(rows), L)
    return LabelReadings({k: torch.cat(v, dim=1) for k, v in probs.items()}, sums)


def describe_lenses(lenses: dict[str, Any]) -> dict[str, str]:
    return {k: v.describe() for k, v in lenses.items()}
