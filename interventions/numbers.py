"""Report numbers without the float64 tail of a float32 value.

A float32 result turned into a Python float (``float(t.mean())``, ``t.tolist()``) carries the float64 digits of
its binary value: an accuracy of 4/100 computed in float32 reads ``0.03999999910593033``. Reports and JSON files
should say ``0.04``. :func:`float32_clean` gives the shortest decimal that reads back as the same float32, so the
cleaned number is the float32 result exactly and nothing measured is lost; stored tensors stay untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def float32_clean(x: float) -> float:
    """``x`` as the shortest decimal that rounds to the same float32 (0.03999999910593033 -> 0.04).

    NaN and infinities pass through. Meant for numbers computed in float32; a float64 result with more than
    float32's ~7 significant digits would be rounded to them."""
    return float(str(np.float32(x)))


def float32_clean_all(obj: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples as lists) with every float passed through
    :func:`float32_clean`; ints, bools, strings and None are kept as they are."""
    if isinstance(obj, float):
        return float32_clean(obj)
    if isinstance(obj, dict):
        return {k: float32_clean_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [float32_clean_all(v) for v in obj]
    return obj
