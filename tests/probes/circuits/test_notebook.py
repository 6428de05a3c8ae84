"""notebooks/circuits.ipynb re-runs small (SmolLM2, 2 pairs per task) with its figures and verdict."""

from __future__ import annotations

import pytest
from notebook_runner import png_count, run_notebook


@pytest.mark.slow
def test_circuits_notebook_runs_small(smollm: object) -> None:  # smollm: skip without the model
    outputs, text = run_notebook("circuits.ipynb", timeout=900)
    assert png_count(outputs) >= 5  # scatter, curves, circuit, head comparison, flow graph
    assert "agrees better with exact patching" in text and "-> logits" in text
