"""Applying a sweep's metric to logits: one metric for every pair, or one per pair of a dataset.

Every method scores logits through these two functions, under ``no_grad`` and on the CPU as float32, so
the exact sweep, the loop and attribution patching report the same numbers for the same logits.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .metrics import Metric


def pair_scores(metric: Metric | Sequence[Metric], logits: torch.Tensor, first: int = 0) -> torch.Tensor:
    """``[cells, n]`` metric values of ``logits [cells, n, vocab]``: pair ``i`` (counted from ``first``) is scored
    by ``metric[first + i]`` (one function for all: a single call)."""
    with torch.no_grad():
        if callable(metric):
            return metric(logits.flatten(0, 1)).detach().float().cpu().reshape(logits.shape[:2])
        funcs = list(metric)[first:first + logits.shape[1]]
        if all(f is funcs[0] for f in funcs):
            return pair_scores(funcs[0], logits)
        return torch.stack([f(logits[:, i]).detach().float().cpu() for i, f in enumerate(funcs)], dim=1)


def scalar_score(metric: Metric, logits: torch.Tensor) -> float:
    """The metric of the first row of ``logits [rows, vocab]`` as a Python float."""
    with torch.no_grad():
        return float(metric(logits)[0])
