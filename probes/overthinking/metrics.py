"""Accuracy, calibrated accuracy, the critical layer, bootstrap spreads and an ablation's gap reduction.

``probs`` tensors are ``[..., n_inputs, n_labels]`` label probabilities (renormalised over the label set)
and ``true`` the ``[n_inputs]`` true label indices.

Calibrated accuracy (Halawi et al., arXiv 2307.09476): for each label, the threshold is the ``(n-1)/n`` quantile of that
label's probability across inputs (``n`` = number of labels); an input counts as correct when its true
label's probability exceeds its label's threshold. This removes a constant preference for one label:
with balanced labels, a classifier whose probabilities carry no information scores about ``1/n``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch


def accuracy(probs: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Fraction of inputs whose argmax label is the true one: ``[...]``."""
    return (probs.argmax(-1) == true.to(probs.device)).float().mean(-1)


def correct(probs: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per-input 0/1 correctness of the argmax: ``[..., n_inputs]``."""
    return (probs.argmax(-1) == true.to(probs.device)).float()


def calibrated_correct(probs: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per-input calibrated correctness ``[..., n_inputs]`` (true label above its label's quantile threshold)."""
    n = probs.shape[-1]
    thresh = torch.quantile(probs.float(), (n - 1) / n, dim=-2, keepdim=True)  # [..., 1, n_labels]
    idx = true.to(probs.device).expand(probs.shape[:-1])[..., None]
    p_true = probs.gather(-1, idx)[..., 0]
    t_true = thresh.expand_as(probs).gather(-1, idx)[..., 0]
    return (p_true > t_true).float()


def calibrated_accuracy(probs: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Calibrated accuracy ``[...]`` (see the module docstring)."""
    return calibrated_correct(probs, true).mean(-1)


@dataclass
class CriticalLayer:
    """The true-false gap across layers and where it opens.

    ``layer`` is the first layer whose gap reaches half the final gap, or None when the final gap does not
    exceed ``min_sigma`` bootstrap standard deviations (``reason`` says why). ``best_false_layer`` is the
    early-exit layer with the best accuracy on false demos and ``best_false_acc`` that accuracy.
    """

    layer: int | None
    gaps: list[float]
    final_gap: float
    final_gap_std: float
    min_sigma: float
    best_false_layer: int
    best_false_acc: float
    final_false_acc: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_std(values: torch.Tensor, n_boot: int = 1000, seed: int = 0) -> float:
    """Bootstrap standard deviation of the mean of ``values [n]`` (resampling inputs)."""
    n = values.shape[0]
    if n < 2:
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (n_boot, n), generator=gen)
    return float(values.float()[idx].mean(1).std())


def critical_layer(correct_true: torch.Tensor, correct_false: torch.Tensor, *, min_sigma: float = 2.0,
                   n_boot: int = 1000, seed: int = 0) -> CriticalLayer:
    """Critical layer from per-input correctness ``[n_layers, n_inputs]`` on true and false prompts.

    The prompts are paired (same texts), so the final gap's spread is the bootstrap std of the mean of
    the per-input differences. No layer is named unless the final gap exceeds ``min_sigma`` times it.
    """
    acc_t, acc_f = correct_true.mean(-1), correct_false.mean(-1)
    gaps = (acc_t - acc_f).tolist()
    final = gaps[-1]
    std = bootstrap_std(correct_true[-1] - correct_false[-1], n_boot, seed)
    best = int(acc_f.argmax())
    kw = dict(gaps=gaps, final_gap=final, final_gap_std=std, min_sigma=min_sigma, best_false_layer=best,
              best_false_acc=float(acc_f[best]), final_false_acc=float(acc_f[-1]))
    if not (final > 0 and final > min_sigma * std) or math.isnan(std):
        why = (f"no gap: final-layer gap {final:+.3f} does not exceed {min_sigma:g} x its bootstrap std "
               f"({std:.3f})")
        return CriticalLayer(None, reason=why, **kw)
    layer = next(i for i, g in enumerate(gaps) if g >= final / 2)
    return CriticalLayer(layer, reason=f"first layer whose gap reaches half the final gap {final:+.3f} "
                                       f"(std {std:.3f})", **kw)


def gap_reduction(acc_true: float, acc_false: float, acc_false_ablated: float) -> float:
    """How much of the true-false accuracy gap an ablation closes on false demos:
    ``1 - (acc_true - acc_false_ablated) / (acc_true - acc_false)``; NaN when there is no gap."""
    gap = acc_true - acc_false
    if abs(gap) < 1e-12:
        return float("nan")
    return 1.0 - (acc_true - acc_false_ablated) / gap
