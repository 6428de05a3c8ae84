"""``steering_tradeoff(..., unit="resid")``: the sweep counts its scales in typical residual norms, as
``to_steer`` and ``generation_sweep`` do (the README teaches those scales), and scores exactly what steering with
``to_steer(scale, unit="resid")`` scores."""

from __future__ import annotations

from lmscope.interventions import HookedModel
from lmscope.probes.steering import SteeringVector, steering_tradeoff

POS = [[1, 2, 3, 4, 5], [5, 6, 7, 9], [8, 9, 10, 11, 12, 13]]
NEG = [[2, 2, 3, 9, 4], [5, 7, 8, 1], [8, 9, 1, 11, 13, 3]]


def margin(model: HookedModel, ivs: list) -> float:
    logits = model.run([[1, 2, 3], [4, 5, 6, 7]], ivs).last_logits()
    return float((logits[:, 7] - logits[:, 8]).mean())


def test_resid_unit_scores_the_resid_steer(llama_tiny: HookedModel) -> None:
    sv = SteeringVector.from_pairs(llama_tiny, POS, NEG, layers=[1, 2], method="mean")
    scales = [-0.3, 0.0, 0.3]
    sweep = steering_tradeoff(llama_tiny, sv, scales, margin, margin, fit=False, unit="resid")
    expected = [margin(llama_tiny, sv.to_steer(s, unit="resid") if s else []) for s in scales]
    assert [r["alignment"] for r in sweep.rows] == expected
    raw = steering_tradeoff(llama_tiny, sv, scales, margin, margin, fit=False)  # unit vectors times 0.3: tiny
    assert raw.rows[0]["alignment"] != expected[0]
    assert sweep.as_dict()["unit"] == "resid" and raw.as_dict()["unit"] == "raw"
