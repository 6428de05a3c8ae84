"""RepE "reading": project activations on a steering vector's direction, layer by layer.

``read(model, prompts, vector)`` -> scores ``[n_prompts, n_layers]`` (the dot
product of each prompt's activation at ``token`` with the unit direction of each
layer). ``separation(model, positives, negatives, vector)`` reports per layer how
well those scores separate held-out positives from negatives (AUROC, accuracy
at the midpoint threshold, and paired accuracy when the sets are paired) and the
best layer, which is how one picks a layer to steer or read at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.collect import collect_activations
from lmscope.interventions.errors import InputError
from lmscope.interventions.specs import LayerSpec, Prompts

from .vectors import SteeringVector

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel


def read(model: HookedModel, prompts: Prompts, vector: SteeringVector, layers: LayerSpec = None,
         token: int | str | None = None, batch_size: int = 16, progress: bool | None = None) -> torch.Tensor:
    """Projection of each prompt's activation on each layer's unit direction: ``[n_prompts, n_layers]``.

    ``token`` defaults to the token the vector was built at (``-1`` when unknown);
    ``"mean"`` averages over the prompt. Activations are read at the vector's site kind.
    """
    vector.check(model)
    sites = vector.sites_of(layers)
    if token is None:
        token = vector.token if isinstance(vector.token, (int, str)) and vector.token is not None else -1
    acts = collect_activations(model, prompts, sites, token, batch_size, progress, desc="reading")
    dirs = torch.stack([vector.direction(s) for s in sites])  # [L, d]
    return torch.stack([acts[s] @ dirs[i] for i, s in enumerate(sites)], dim=1)


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score of a random positive > a random negative), ties counting half (Mann-Whitney form)."""
    if pos.numel() == 0 or neg.numel() == 0:
        raise InputError("auroc needs at least one positive and one negative score.")
    diff = pos.double()[:, None] - neg.double()[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


@dataclass
class Separation:
    """Per-layer separation of positives from negatives by their projection on the vector."""

    layers: list[int]
    auroc: list[float]
    accuracy: list[float]
    pair_accuracy: list[float] | None
    pos_scores: torch.Tensor  # [n_pos, n_layers]
    neg_scores: torch.Tensor  # [n_neg, n_layers]

    @property
    def best_layer(self) -> int:
        """The layer with the highest AUROC (ties: highest accuracy, then earliest)."""
        best = max(range(len(self.layers)), key=lambda i: (self.auroc[i], self.accuracy[i], -i))
        return self.layers[best]

    def table(self) -> list[dict[str, Any]]:
        return [{"layer": layer, "auroc": self.auroc[i], "accuracy": self.accuracy[i],
                 **({"pair_accuracy": self.pair_accuracy[i]} if self.pair_accuracy is not None else {})}
                for i, layer in enumerate(self.layers)]

    def to_markdown(self) -> str:
        rows = self.table()
        keys = list(rows[0])
        out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        out += ["| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |"
                for r in rows]
        return "\n".join(out)


def separation(model: HookedModel, positives: Prompts, negatives: Prompts, vector: SteeringVector,
               layers: LayerSpec = None, token: int | str | None = None, batch_size: int = 16) -> Separation:
    """How well the projection on ``vector`` separates held-out positives from negatives, per layer.

    ``accuracy`` classifies with the midpoint between the two class means as the
    threshold (positives above); ``auroc`` needs no threshold; ``pair_accuracy``
    (equal-size sets, taken as pairs) is the fraction of pairs whose positive
    projects higher. Use prompts that were *not* used to build the vector.
    """
    pos_list: list[Any] = list(positives)
    neg_list: list[Any] = list(negatives)
    if not pos_list or not neg_list:
        raise InputError("separation needs at least one positive and one negative prompt.")
    scores = read(model, pos_list + neg_list, vector, layers, token, batch_size)
    sp, sn = scores[:len(pos_list)], scores[len(pos_list):]
    sites = vector.sites_of(layers)
    aucs, accs, pairs = [], [], []
    for j in range(scores.shape[1]):
        p, n = sp[:, j], sn[:, j]
        thr = (p.mean() + n.mean()) / 2
        aucs.append(auroc(p, n))
        accs.append(float(((p > thr).sum() + (n <= thr).sum()) / (len(p) + len(n))))
        if len(p) == len(n):
            pairs.append(float((p > n).double().mean()))
    return Separation([vector.layers[vector.sites.index(s)] for s in sites], aucs, accs,
                      pairs if len(sp) == len(sn) else None, sp, sn)
