"""The binding study's patching part: a resid_pre x position map of one clean/attribute-exchanged pair."""

from __future__ import annotations

import json

import pytest
import torch


def _check(model, task, rep: dict) -> None:
    from lmscope.probes.binding.patching import patching_pair
    from lmscope.probes.patching import logit_diff, patching_sweep

    values = torch.tensor(rep["values"])
    assert values.shape == (model.n_layers, len(rep["tokens"])) == (len(rep["layers"]), len(rep["corrupt_tokens"]))
    assert rep["layers"] == [f"resid_pre.{i}" for i in range(model.n_layers)]
    assert rep["corrupt_context"]["attributes"] == rep["clean_context"]["attributes"][::-1]
    assert rep["corrupt_context"]["entities"] == rep["clean_context"]["entities"]
    first = rep["differing_positions"][0]
    assert first > 0
    # before the first token where the prompts differ, clean and corrupt resid_pre are the same: no effect
    assert torch.allclose(values[:, :first], torch.tensor(rep["corrupt_metric"]), atol=1e-4)
    # patching every token of resid_pre.0 reproduces the clean run
    clean, corrupt = patching_pair(model, task)
    metric = logit_diff(model, *clean.candidates)
    every = patching_sweep(model, torch.tensor([clean.ids]), torch.tensor([corrupt.ids]), "resid_pre.0", "all",
                           metric, progress=False)
    assert every.values.shape == (1, 1)
    assert float(every.values[0, 0]) == pytest.approx(rep["clean_metric"], abs=1e-4)
    assert rep["clean_metric"] != pytest.approx(rep["corrupt_metric"], abs=1e-6)


def test_patching_part_on_the_toy_task(toy_model, toy_task) -> None:
    from lmscope.probes.binding import binding_study

    rep = binding_study(toy_model, [toy_task], n_train=2, n_test=2, main_task="toy", progress=False,
                        parts=("patching",))
    json.loads(json.dumps(rep))
    _check(toy_model, toy_task, rep["patching"])


def test_exact_and_loop_maps_agree(toy_model, toy_task) -> None:
    from lmscope.probes.binding import binding_patching

    exact = binding_patching(toy_model, toy_task)
    loop = binding_patching(toy_model, toy_task, method="loop")
    assert exact["method"] == "exact" and loop["method"] == "loop"
    assert torch.allclose(torch.tensor(exact["values"]), torch.tensor(loop["values"]), atol=1e-4)


@pytest.mark.slow
def test_patching_part_on_smollm(smollm) -> None:
    from lmscope.probes.binding import binding_patching, load_task

    task = load_task("capitals")
    rep = binding_patching(smollm, task)
    _check(smollm, task, rep)
    assert rep["answer_tokens"][0].strip() and rep["tokens"][rep["attribute_spans"][0][0]].strip()
