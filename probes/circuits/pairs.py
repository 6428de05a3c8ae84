"""Clean/corrupt prompt pairs for edge-level methods, and the metric applied to their runs.

Edges compare a node's clean and corrupt output position by position, so each pair's two prompts must have the
same number of tokens (as in the IOI pairs: names swapped one for one). Pairs of different lengths share one
left-padded batch; the clean and the corrupt batch then have the same layout, column for column.

A metric is a function of last-position logits ``[rows, vocab]`` returning ``[rows]`` (e.g.
:func:`lmscope.probes.patching.logit_diff`), or one such function per pair.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

import torch

from lmscope.interventions.errors import InputError
from lmscope.interventions.inputs import Batch

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

Metric = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Pairs:
    """``n`` clean/corrupt pairs as two batches of one padded layout, and one metric per pair."""

    clean: Batch
    corrupt: Batch
    metrics: list[Metric]

    @property
    def n(self) -> int:
        return int(self.clean.input_ids.shape[0])

    def rows(self, batch: Batch, repeats: int) -> Batch:
        """``batch`` repeated ``repeats`` times (mask-major rows: repeat ``r`` of pair ``p`` is row ``r * n + p``)."""
        return Batch(batch.input_ids.repeat(repeats, 1), batch.attention_mask.repeat(repeats, 1),
                     batch.position_ids.repeat(repeats, 1))

    def select(self, index: Sequence[int]) -> Pairs:
        """The pairs at ``index`` (the shared padding is kept)."""
        idx = torch.as_tensor(list(index), dtype=torch.long)

        def pick(b: Batch) -> Batch:
            i = idx.to(b.input_ids.device)
            return Batch(b.input_ids[i], b.attention_mask[i], b.position_ids[i])
        return Pairs(pick(self.clean), pick(self.corrupt), [self.metrics[int(i)] for i in idx])


def _as_list(prompts: Any) -> list[Any]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, torch.Tensor):
        return [prompts.tolist()] if prompts.dim() == 1 else [row.tolist() for row in prompts]
    if isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], int):
        return [list(prompts)]
    return list(prompts)


def prepare_pairs(model: HookedModel, clean: Any, corrupt: Any, metric: Metric | Sequence[Metric]) -> Pairs:
    """Tokenise ``clean``/``corrupt`` (one prompt each, or equal-length lists) into one layout; check the metric."""
    cl, co = _as_list(clean), _as_list(corrupt)
    if not cl or len(cl) != len(co):
        raise InputError(f"Give as many corrupt prompts as clean ones (got {len(cl)} clean, {len(co)} corrupt).")
    metrics: list[Metric] = list(metric) if isinstance(metric, (list, tuple)) else [cast(Metric, metric)] * len(cl)
    if len(metrics) != len(cl) or not all(callable(m) for m in metrics):
        raise InputError("metric is a function of last-position logits [rows, vocab] -> [rows] (e.g. "
                         "lmscope.probes.patching.logit_diff(model, ' Mary', ' John')), or a list of one per pair "
                         f"({len(cl)} pairs).")
    a, b = model.tokenize(cl), model.tokenize(co)
    la, lb = a.lengths.tolist(), b.lengths.tolist()
    bad = [i for i, (x, y) in enumerate(zip(la, lb)) if x != y]
    if bad:
        i = bad[0]
        raise InputError(f"Pair {i}: the clean prompt has {la[i]} tokens and the corrupt one {lb[i]}; edge-level "
                         "methods compare the two runs position by position, so each pair needs equal lengths "
                         f"({len(bad)} pair(s) differ).")
    return Pairs(a, b, metrics)


def apply_metric(metrics: list[Metric], logits: torch.Tensor) -> torch.Tensor:
    """``[repeats, pairs]``: each pair's metric on its rows of last-position ``logits [repeats * pairs, vocab]``."""
    n = len(metrics)
    if logits.shape[0] % n:
        raise InputError(f"{logits.shape[0]} rows are not a whole number of repeats of {n} pairs.")
    grid = logits.view(-1, n, logits.shape[-1])
    if all(m is metrics[0] for m in metrics):
        return metrics[0](grid.flatten(0, 1)).view(-1, n)
    return torch.stack([metrics[p](grid[:, p]) for p in range(n)], dim=1)


def forward_kwargs(model: HookedModel, batch: Batch) -> dict[str, Any]:
    """Keyword arguments of one cache-free forward over a padded ``batch`` that unembeds the last position only
    (where the model's forward can)."""
    kwargs: dict[str, Any] = dict(input_ids=batch.input_ids.to(model.device),
                                  attention_mask=batch.attention_mask.to(model.device),
                                  position_ids=batch.position_ids.to(model.device), use_cache=False)
    if "logits_to_keep" in inspect.signature(model.hf_model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    return kwargs


def run_pairs(model: HookedModel, batch: Batch, interventions: list[Any], grad: bool = False) -> torch.Tensor:
    """Last-position logits (float32) of one forward over a padded ``batch`` under ``interventions``."""
    with model.apply(interventions), (nullcontext() if grad else torch.no_grad()):
        out = model.hf_model(**forward_kwargs(model, batch))
    return out.logits[:, -1].float()
