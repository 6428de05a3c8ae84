"""Experiments on the toy task and a tiny random model: calibration arithmetic, factorization, shifts, Δ."""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.interventions.errors import InputError
from lmscope.probes.binding import (
    accuracy,
    attribute_medians,
    baseline,
    calibrated_accuracy,
    estimate_deltas,
    factorization,
    position_shift,
    predicted_binding,
    subspace,
    table_one,
)
from lmscope.probes.binding.prompts import build_prompt, sample_contexts
from lmscope.probes.binding.runs import score


def test_calibrated_accuracy_toy_case() -> None:
    # "X" is always favoured by 3 nats whatever is asked: raw accuracy 0.5, calibrated 1.0
    attrs = [("X", "Y"), ("Y", "X"), ("X", "Y"), ("Y", "X")]
    correct = [1, 0, 0, 1]
    lp = torch.tensor([[-1.0, -2.0], [-2.0, -1.0], [-1.0, -4.5], [-4.5, -1.0]])
    assert accuracy(lp, correct) == 0.5
    calib = torch.tensor([[-1.0, -4.0], [-4.0, -1.0], [-1.2, -3.8]])  # queries about absent names
    medians = attribute_medians(calib, [("X", "Y"), ("Y", "X"), ("X", "Y")])
    assert medians == pytest.approx({"X": -1.0, "Y": -4.0})
    assert calibrated_accuracy(lp, attrs, correct, medians) == 1.0
    # unseen attribute falls back to the median of the medians
    assert calibrated_accuracy(torch.tensor([[-1.0, -1.2]]), [("X", "Z")], [1], medians) == 1.0
    with pytest.raises(InputError, match="calibration medians"):
        calibrated_accuracy(lp, attrs, correct, {})


def test_predicted_binding() -> None:
    assert predicted_binding("none", 0) == {0: 0, 1: 1}
    assert predicted_binding("entity", 0) == {2: 0, 1: 1}
    assert predicted_binding("attribute", 1) == {0: 0, 1: 3}
    assert predicted_binding("both", 0) == {2: 2, 1: 1}


def test_factorization_none_is_clean_baseline(toy_model, toy_task, fake_tok) -> None:
    rep = factorization(toy_model, toy_task, 2, progress=False, batch_size=4)
    assert set(rep["mean_logprob"]) == {"none", "entity", "attribute", "both"}
    assert torch.tensor(rep["mean_logprob"]["none"]).shape == (4, 4)
    # the "none" row queries the target's own names: it equals a clean run of those prompts
    ctxs = sample_contexts(fake_tok, toy_task, 2, seed=0)
    prompts = [build_prompt(fake_tok, toy_task, c, 0) for c in ctxs]
    clean = score(toy_model, prompts, progress=False)
    got = torch.tensor(rep["mean_logprob"]["none"])[0, :2]
    # candidates 0..1 of the factorization rows are the target's attributes: same log-probs
    torch.testing.assert_close(got, clean.mean(0), rtol=1e-4, atol=1e-4)
    assert rep["mean_logprob"]["entity"] != rep["mean_logprob"]["none"]
    json.dumps(rep)


def test_position_shift_zero_is_clean(toy_model, toy_task, fake_tok) -> None:
    rep = position_shift(toy_model, toy_task, 3, fractions=(0.0, 1.0), progress=False)
    base = baseline(toy_model, toy_task, 3, progress=False)
    assert rep["accuracy"][0] == pytest.approx(base["accuracy"])
    assert rep["logprob_right"][1] != rep["logprob_right"][0]
    with pytest.raises(InputError, match="before position 0"):
        position_shift(toy_model, toy_task, 1, fractions=(-5.0,), progress=False)


def test_deltas_table_one_and_subspace(toy_model, toy_task, fake_tok) -> None:
    d = estimate_deltas(toy_model, toy_task, 4, progress=False)
    assert d.entity[0].shape[0] == toy_model.n_layers and d.entity[0].shape[-1] == toy_model.d_model
    assert d.attribute[0].shape[1] == 2  # the toy attributes are two tokens
    rep = table_one(toy_model, toy_task, d, 3, progress=False)
    base = baseline(toy_model, toy_task, 3, progress=False)
    assert rep["rows"]["none"]["accuracy"] == [s["accuracy"] for s in base["per_slot"]]
    json.dumps(rep)
    d3 = estimate_deltas(toy_model, toy_task, 3, n_entities=3, progress=False)
    assert len(d3.entity) == 2
    grid = subspace(toy_model, toy_task, d3, 2, grid=(0.0, 1.0), progress=False)
    assert len(grid["accuracy"]) == 2 and len(grid["accuracy"][0]) == 2
    with pytest.raises(InputError, match="Δ\\(2\\)"):
        subspace(toy_model, toy_task, d, 2, progress=False)


def test_study_report_is_json(toy_model, toy_task) -> None:
    from lmscope.probes.binding import PAPER, binding_study

    rep = binding_study(toy_model, [toy_task], n_train=2, n_test=2, n_factorization=1, n_position=1, n_subspace=1,
                        grid=(0.0, 1.0), fractions=(0.0, 1.0), main_task="toy", progress=False)
    assert set(rep) >= {"tasks", "factorization", "position", "position_keys_only", "transfer", "subspace", "paper",
                        "wall_s"}
    assert set(rep["position_keys_only"]) == set(rep["position"])  # both variants, same spans
    assert rep["position_keys_only"]["entity"]["method"].startswith("keys re-rotated")
    assert rep["paper"] == PAPER and set(rep["tasks"]["toy"]) == {"baseline", "table_one"}
    assert json.loads(json.dumps(rep)) == rep
