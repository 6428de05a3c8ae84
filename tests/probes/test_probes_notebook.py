"""The probes notebook executes end to end at small sizes (LMSCOPE_NOTEBOOK_SMALL=1) with nbclient."""

from __future__ import annotations

from pathlib import Path

import pytest
from notebook_runner import run_notebook

NOTEBOOK = Path(__file__).parent.parent.parent / "notebooks" / "probes.ipynb"


@pytest.mark.slow
def test_probes_notebook_runs_smoke(smollm) -> None:  # smollm: skip when the default model is missing
    """Smoke test: the notebook executes and shows its figures and summary lines (the methods it calls are tested
    in their own files)."""
    outputs, text = run_notebook(NOTEBOOK.name, timeout=600)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3, "sweep, heat map and ROC must be shown"
    assert "best layer by selectivity" in text and "sum of terms" in text and "AUROC injected vs plain" in text
