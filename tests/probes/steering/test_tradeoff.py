"""Trade-off fitting (synthetic curves with known coefficients), sweep mechanics and the evals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmscope.interventions import HookedModel
from lmscope.interventions.errors import InputError
from lmscope.probes.steering import (
    AnswerEval,
    BehaviourEval,
    ChoiceEval,
    SteeringVector,
    as_eval,
    fit_linear,
    fit_quadratic,
    fit_tanh,
    fit_wolf_helpfulness,
    r_squared,
    steering_tradeoff,
)

R = np.arange(-10, 10.25, 0.25)


def test_fit_tanh_recovers_coefficients() -> None:
    y = 0.8 * np.tanh(0.3 * R - 0.4)
    f = fit_tanh(R, y)
    assert f.params == pytest.approx({"A": 0.8, "a": 0.3, "b": -0.4}, abs=1e-4) and f.r2 > 0.9999
    f1 = fit_tanh(R, np.tanh(0.5 * R + 0.2), amplitude=False)
    assert f1.params == pytest.approx({"a": 0.5, "b": 0.2}, abs=1e-4)
    noisy = 0.8 * np.tanh(0.3 * R - 0.4) + np.random.default_rng(0).normal(0, 0.02, R.shape)
    assert fit_tanh(R, noisy).params["a"] == pytest.approx(0.3, rel=0.1)


def test_fit_wolf_and_quadratic_recover_coefficients() -> None:
    a, b = 0.6, 0.4
    y = 1 / (1 + a + a * (b ** 2 / 2) * R ** 2)
    f = fit_wolf_helpfulness(R, y)
    assert f.params == pytest.approx({"a": a, "b": b}, abs=1e-5) and f.r2 > 0.9999
    q = fit_quadratic(R, 0.5 - 0.01 * R + -0.002 * R ** 2)
    assert q.params == pytest.approx({"c0": 0.5, "c1": -0.01, "c2": -0.002}, abs=1e-9)
    lin = fit_linear(R, np.tanh(0.3 * R), window=1.0)
    assert lin.params["slope"] == pytest.approx(0.3, rel=0.05)
    assert r_squared(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 1.0


def test_fit_errors() -> None:
    with pytest.raises(InputError):
        fit_quadratic([1, 2], [1, 2])
    with pytest.raises(InputError):
        fit_linear([1, 2, 3], [1, 2])
    with pytest.raises(InputError):
        fit_wolf_helpfulness([1, 2, 3], [0.5, -0.1, 0.2])


def _fake_evals():
    """Evals on token ids for tiny models: the logit margin of token 7 over token 8, and P(token 7)."""
    def align(model, ivs):
        lg = model.run([[1, 2, 3], [4, 5, 6, 7]], ivs).last_logits()
        return float((lg[:, 7] - lg[:, 8]).mean())

    def helpful(model, ivs):
        return {"score": float(model.run([[1, 2, 3]], ivs).last_logits().softmax(-1)[0, 7]), "extra": 1.0}
    return align, helpful


def test_steering_tradeoff_sweep_and_plot(llama_tiny: HookedModel, tmp_path) -> None:
    torch.manual_seed(0)
    sv = SteeringVector({f"resid_pre.{i}": torch.randn(llama_tiny.d_model) for i in (1, 2)},
                        fingerprint=llama_tiny.fingerprint())
    align, helpful = _fake_evals()
    res = steering_tradeoff(llama_tiny, sv, [-4, -2, -1, 0, 1, 2, 4], align, helpful, layers=[2])
    assert [r["scale"] for r in res.rows] == [-4, -2, -1, 0, 1, 2, 4]
    assert res.layers == [2] and res.rows[0]["helpfulness_extra"] == 1.0
    base = align(llama_tiny, [])
    assert res.rows[3]["alignment"] == base  # scale 0: no steering at all
    assert set(res.fits) >= {"alignment_tanh", "alignment_linear", "helpfulness_quadratic"}
    res.plot(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert "alignment_tanh" in res.to_markdown()
    with pytest.raises(InputError):
        steering_tradeoff(llama_tiny, sv, [], align, helpful)


def test_as_eval_forms() -> None:
    f = lambda m, ivs: 1.0
    assert as_eval(f) is f
    assert isinstance(as_eval((["q"], [" a"])), AnswerEval)
    assert isinstance(as_eval([("q", " a")]), AnswerEval)
    assert isinstance(as_eval({"prompts": ["q"], "answers": [" a"]}), AnswerEval)
    with pytest.raises(InputError):
        as_eval(3)
    with pytest.raises(InputError):
        ChoiceEval(["q"], [["a", "b"]], ["C"])
    with pytest.raises(InputError):
        BehaviourEval([], [" a"], [" b"])


@pytest.mark.slow
def test_shipped_evals_on_smollm(smollm: HookedModel) -> None:
    from lmscope.probes.steering import mcq_eval, sentiment_eval

    h = mcq_eval()(smollm)
    assert h["chance"] == 0.25
    assert h["accuracy"] > 0.45 and h["score"] > 0.4, h  # well above chance (measured 0.65 / 0.55)
    a = sentiment_eval(6)(smollm)
    assert -1 <= a["score"] <= 1 and a["p_positive"] > 0
    # steering batches: a sweep of 3 scales with a small sentiment vector moves the alignment score
    from lmscope.probes.steering import load_pairs

    pos, neg = load_pairs()
    sv = SteeringVector.from_pairs(smollm, pos[:8], neg[:8], layers=[15, 16, 17], batch_size=8)
    res = steering_tradeoff(smollm, sv, [-8, 0, 8], sentiment_eval(6), mcq_eval(8))
    al = [r["alignment"] for r in res.rows]
    assert al[0] < al[1] < al[2]
