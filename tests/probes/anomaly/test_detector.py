"""Trajectory anomaly detection: planted outliers separate, lens features are right, errors are specific."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmscope.interventions import Cache, HookedModel
from lmscope.interventions.errors import InputError
from lmscope.lens import LogitLens
from lmscope.probes.anomaly import TrajectoryDetector, anomaly_auroc, load_injection_example, trajectory_features


@pytest.mark.parametrize("method", ["iforest", "lof"])
def test_planted_outlier_distribution_separates(method: str) -> None:
    rng = np.random.default_rng(0)
    normal_train, normal_test = rng.normal(size=(200, 12)), rng.normal(size=(100, 12))
    outliers = rng.normal(size=(100, 12)) + np.r_[np.full(3, 3.0), np.zeros(9)]  # shifted in 3 features
    det = TrajectoryDetector(method=method, seed=0).fit(normal_train)
    assert anomaly_auroc(det.score(normal_test), det.score(outliers)) > 0.95
    same = rng.normal(size=(100, 12))  # control: a second normal sample is not anomalous
    assert abs(anomaly_auroc(det.score(normal_test), det.score(same)) - 0.5) < 0.12


def test_features_match_the_lens_by_hand(llama_tiny: HookedModel) -> None:
    prompts = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]
    lens = LogitLens(llama_tiny)
    feats = trajectory_features(lens, prompts, batch_size=2)
    assert feats.shape == (3, 3 * llama_tiny.n_layers)
    for i, p in enumerate(prompts):  # unbatched, by hand
        res = llama_tiny.run([p], [Cache("resid_post.*")])
        final = torch.log_softmax(res.logits[0, -1], -1)
        for layer in range(llama_tiny.n_layers):
            lp = torch.log_softmax(llama_tiny.decode_hidden(res.cache[f"resid_post.{layer}"][0, -1]), -1)
            want = [lp[final.argmax()], -(lp.exp() * lp).sum(), (final.exp() * (final - lp)).sum()]
            np.testing.assert_allclose(feats[i, 3 * layer:3 * layer + 3], [float(v.detach()) for v in want], atol=1e-4)
    assert abs(feats[0, -1]) < 1e-4  # KL of the last reading to the model's own output is zero
    answer = trajectory_features(lens, prompts, features="answer")
    np.testing.assert_allclose(answer, feats[:, ::3], atol=1e-5)
    np.testing.assert_allclose(trajectory_features(lens, prompts, layers=[0, -1]), feats[:, np.r_[0:3, 6:9]], atol=1e-5)
    det = TrajectoryDetector(lens, method="lof").fit(prompts + [[3, 3, 3], [7, 7]])
    assert det.score(prompts).shape == (3,)


def test_injection_example_is_paired() -> None:
    plain, injected = load_injection_example()
    assert len(plain) == len(injected) == 40
    assert all(p.endswith("Answer:") and i.endswith("Answer:") and len(i) > len(p) for p, i in zip(plain, injected))
    assert len(load_injection_example(5)[0]) == 5


def test_bad_input() -> None:
    with pytest.raises(InputError, match="method"):
        TrajectoryDetector(method="svm")
    with pytest.raises(InputError, match="features"):
        TrajectoryDetector(features="logits")
    det = TrajectoryDetector()
    with pytest.raises(InputError, match="fit"):
        det.score(np.zeros((2, 3)))
    with pytest.raises(InputError, match="no lens"):
        det.fit(["a prompt"])
    det.fit(np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(InputError, match="fitted on 3"):
        det.score(np.zeros((2, 4)))
    with pytest.raises(InputError, match="at least two"):
        TrajectoryDetector().fit(np.zeros((1, 3)))
