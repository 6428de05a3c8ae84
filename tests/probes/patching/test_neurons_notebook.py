"""The neuron-study notebook (neurons= on the sweeps and on Ablate) executes end to end in small mode (4 pairs)."""

from __future__ import annotations

import pytest
from notebook_runner import run_notebook


@pytest.mark.slow
def test_neurons_notebook_runs(smollm) -> None:  # smollm: skip when the default model is missing
    """Smoke test of the notebook's story (the calls it makes are tested in their own files): the MLP, the
    attribution vs exact table of its top neurons, the ablation of the top one."""
    _, text = run_notebook("neurons.ipynb", timeout=600)
    assert "4 pairs" in text and "MLP layer" in text
    assert text.count("attribution ") >= 4 and text.count(" exact ") >= 4
    assert "mean-ablating neuron" in text and "(paired)" in text
