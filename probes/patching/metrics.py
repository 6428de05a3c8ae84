"""Patching metrics: functions of last-position logits ``[rows, vocab]`` -> one scalar per row ``[rows]``.

Every sweep calls ``metric(logits)`` on the logits of the last prompt token of each patched run
(and of the two unpatched runs); the function must be differentiable for attribution patching.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from lmscope.interventions.errors import InputError

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

Metric = Callable[[torch.Tensor], torch.Tensor]


def _token(model: HookedModel, token: str | int) -> int:
    if isinstance(token, int) and not isinstance(token, bool):
        if not 0 <= token < model.d_vocab:
            raise InputError(f"Token id {token} is outside the vocabulary 0..{model.d_vocab - 1}.")
        return token
    if not isinstance(token, str):
        raise InputError(f"A token must be a single-token string or a token id, got {token!r}.")
    return model.token_id(token)


def logit_diff(model: HookedModel, target: str | int, distractor: str | int) -> Metric:
    """``logit[target] - logit[distractor]`` (strings must be single tokens, e.g. ``" Paris"``)."""
    t, d = _token(model, target), _token(model, distractor)
    if t == d:
        raise InputError(f"target and distractor are the same token ({t}); the logit difference would be 0.")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, t] - logits[:, d]

    metric.__name__ = "logit_diff"
    return metric


def target_logprob(model: HookedModel, target: str | int) -> Metric:
    """``log p(target)`` at the last position."""
    t = _token(model, target)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits.float(), dim=-1)[:, t]

    metric.__name__ = "logprob"
    return metric


def default_metric(model: HookedModel, target: str | int, distractor: str | int | None = None) -> Metric:
    """The CLI's metric: logit difference when a distractor is given, else the target's log-probability."""
    return target_logprob(model, target) if distractor is None else logit_diff(model, target, distractor)
