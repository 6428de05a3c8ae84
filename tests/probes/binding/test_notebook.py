"""The binding-ID notebook executes end to end at small size (LMSCOPE_NOTEBOOK_SMALL=1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from notebook_runner import run_notebook

NOTEBOOK = Path(__file__).parents[3] / "notebooks" / "binding_ids.ipynb"


@pytest.mark.slow
def test_binding_notebook_runs(smollm) -> None:  # smollm: skip when the default model is missing
    outputs, text = run_notebook(NOTEBOOK.name, timeout=600)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3, "the three figures were not displayed"
    assert "binding-ID signature" in text and "paper 30B" in text
