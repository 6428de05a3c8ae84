"""Accuracy of binding scores: raw, per-attribute calibration medians, and calibrated accuracy.

Every experiment scores a prompt by the log-probabilities of its candidate attributes' answer tokens
(:func:`lmscope.probes.binding.runs.score_many`); these turn such ``[n, k]`` scores into the paper's numbers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lmscope.interventions.errors import InputError
from lmscope.interventions.numbers import float32_clean


def accuracy(logprobs: torch.Tensor, correct: Sequence[int]) -> float:
    """Fraction of rows whose argmax candidate is ``correct[row]`` (NaN without rows), as its float32 mean
    reads in short decimals (0.04, not 0.03999999910593033)."""
    if logprobs.shape[0] == 0:
        return float("nan")
    return float32_clean(float((logprobs.argmax(1) == torch.as_tensor(list(correct))).float().mean()))


def attribute_medians(logprobs: torch.Tensor, attributes: Sequence[Sequence[str]]) -> dict[str, float]:
    """Median log-prob of each attribute over calibration rows (queries about an absent name)."""
    values: dict[str, list[float]] = {}
    for row, names in zip(logprobs.tolist(), attributes):
        for v, name in zip(row, names):
            values.setdefault(name, []).append(v)
    return {k: float(np.median(v)) for k, v in values.items()}


def calibrated_accuracy(logprobs: torch.Tensor, attributes: Sequence[Sequence[str]], correct: Sequence[int],
                        medians: dict[str, float]) -> float:
    """Accuracy after subtracting each attribute's calibration median (Feng & Steinhardt's calibration).

    Attributes never seen in calibration fall back to the median of all calibration medians.
    """
    if not medians:
        raise InputError("Calibrated accuracy needs calibration medians (queries about absent names).")
    fallback = float(np.median(list(medians.values())))
    offset = torch.tensor([[medians.get(a, fallback) for a in names] for names in attributes])
    return accuracy(logprobs - offset, correct)
