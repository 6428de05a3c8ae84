"""The IOI-style circuit-hunt notebook executes end to end (small: 4 prompt pairs) with nbclient."""

from __future__ import annotations

import pytest
from notebook_runner import png_count, run_notebook


@pytest.mark.slow
def test_ioi_circuit_notebook_runs(smollm) -> None:  # smollm: skip when the default model is missing
    outputs, text = run_notebook("ioi_circuit.ipynb", timeout=600)
    assert png_count(outputs) >= 3, "the head map, the QK bars and the MLP bars were not all displayed"
    assert "4 pairs" in text and "top heads" in text
    assert "check: softmax(attn_scores) == attn_pattern" in text
    assert "patched alone" in text
