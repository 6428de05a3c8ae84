"""The steering trade-off notebook executes end to end (small sizes) with nbclient."""

from __future__ import annotations

from pathlib import Path

import pytest
from notebook_runner import run_notebook

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "steering_tradeoff.ipynb"


@pytest.mark.slow
def test_steering_notebook_runs_smoke(smollm) -> None:  # smollm: skip when the default model is missing
    """Smoke test: the notebook executes and shows its plot and tables (the methods it calls are tested in their
    own files)."""
    outputs, text = run_notebook(NOTEBOOK.name, timeout=120)
    assert any("image/png" in o.get("data", {}) for o in outputs), "the plot was not displayed"
    assert "alignment_tanh" in text and "best layer" in text
