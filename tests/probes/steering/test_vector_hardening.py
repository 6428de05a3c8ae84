"""Non-finite steering vectors are refused at construction."""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions.errors import InputError


def test_non_finite_steering_vector() -> None:
    from lmscope.probes.steering import SteeringVector

    with pytest.raises(InputError, match="resid_pre.1 has 2 NaN or infinite"):
        SteeringVector({"resid_pre.1": torch.tensor([1.0, float("nan"), float("inf")])})
