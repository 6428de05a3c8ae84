"""Numerical tolerances derived from a dtype's machine epsilon, stated once for the library and its tests.

Two error sources bound how far two computations of the same quantity can drift apart:

- **storage rounding**: every intermediate tensor stored in the model's dtype is rounded to it, a relative
  error of at most ``eps / 2`` per rounding (``eps = torch.finfo(dtype).eps``: 1.2e-7 for float32, 9.8e-4 for
  float16, 7.8e-3 for bfloat16). ``n_ops`` counts the roundings on the longest path between the two results;
- **accumulation order**: matmuls and reductions accumulate in float32 whatever the storage dtype (CPU and
  CUDA kernels alike), so two kernels summing in another order differ by a float32 floor, :data:`ACCUMULATION`.

Rounding errors scale with the largest magnitudes that were summed, not with each element, so comparisons are
*norm-wise*: ``max |actual - expected| <= rtol * scale + atol``, with ``scale`` the largest ``|expected|``
(or a scale the caller states, such as the sum of magnitudes of terms added to form a total).
"""

from __future__ import annotations

from typing import Union

import torch

#: Relative error floor of float32 accumulation in another order (reductions over up to ~1e4 elements).
ACCUMULATION = 1e-5
#: ``atol`` as a fraction of ``rtol``: results whose expected values are all below this on an order-one scale
#: count as zero (pass ``scale=`` when the inputs' scale is known instead).
ABS_FLOOR = 1e-3
#: Roundings assumed when a caller does not count them: a few stored intermediates between two results.
DEFAULT_OPS = 4

Number = Union[torch.Tensor, float, int]


def tolerance(dtype: torch.dtype, n_ops: int = DEFAULT_OPS) -> tuple[float, float]:
    """``(rtol, atol)`` for two results that went through up to ``n_ops`` roundings to ``dtype``.

    ``rtol = n_ops * eps(dtype) + ACCUMULATION``; ``atol = rtol * ABS_FLOOR`` (what an all-zero expected value
    allows). A non-floating ``dtype`` gets float32's tolerance.
    """
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    rtol = n_ops * eps + ACCUMULATION
    return rtol, rtol * ABS_FLOOR


def lowest_precision(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype with the largest epsilon among ``dtypes`` (floating ones; float32 when there are none)."""
    floats = [d for d in dtypes if d.is_floating_point] or [torch.float32]
    return max(floats, key=lambda d: torch.finfo(d).eps)


def _tensor(x: Number) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)


def max_error(actual: Number, expected: Number, dtype: torch.dtype | None = None, n_ops: int = DEFAULT_OPS,
              scale: float | None = None) -> tuple[float, float]:
    """``(max |actual - expected|, allowed)`` under :func:`tolerance` (see :func:`is_close` for the arguments)."""
    a, b = _tensor(actual), _tensor(expected)
    dtype = dtype or lowest_precision(a.dtype, b.dtype)
    rtol, atol = tolerance(dtype, n_ops)
    b64 = b.to(device=a.device, dtype=torch.float64)
    err = float((a.to(torch.float64) - b64).abs().max()) if a.numel() else 0.0
    if scale is None:
        scale = float(b64.abs().max()) if b64.numel() else 0.0
    return err, rtol * scale + atol


def is_close(actual: Number, expected: Number, dtype: torch.dtype | None = None, n_ops: int = DEFAULT_OPS,
             scale: float | None = None) -> bool:
    """Whether ``actual`` equals ``expected`` up to ``n_ops`` roundings in ``dtype``, norm-wise.

    ``dtype`` defaults to the lower precision of the two arguments' dtypes (pass the model's dtype when
    both were already upcast to float32); ``scale`` defaults to the largest ``|expected|``.
    """
    err, allowed = max_error(actual, expected, dtype, n_ops, scale)
    return err <= allowed


def assert_close(actual: Number, expected: Number, dtype: torch.dtype | None = None, n_ops: int = DEFAULT_OPS,
                 scale: float | None = None, msg: str = "") -> None:
    """Raise ``AssertionError`` stating the error and the allowance unless :func:`is_close` holds (tests)."""
    a, b = _tensor(actual), _tensor(expected)
    if a.shape != b.shape:
        raise AssertionError(f"{msg}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}".lstrip(": "))
    err, allowed = max_error(a, b, dtype, n_ops, scale)
    if not err <= allowed:  # also fails on NaN
        which = dtype or lowest_precision(a.dtype, b.dtype)
        raise AssertionError(f"{msg}: max |actual - expected| = {err:.3g} exceeds {allowed:.3g} "
                             f"({n_ops} roundings in {which})".lstrip(": "))
