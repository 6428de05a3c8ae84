"""The steering trade-off notebook executes end to end (small sizes) with nbclient."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "steering_tradeoff.ipynb"


@pytest.mark.slow
def test_steering_notebook_runs(smollm) -> None:  # smollm: skip when the default model is missing
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["LMSCOPE_NOTEBOOK_SMALL"] = "1"
    try:
        start = time.perf_counter()
        nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOK.parent.parent)}}).execute()
        elapsed = time.perf_counter() - start
    finally:
        os.environ.pop("LMSCOPE_NOTEBOOK_SMALL", None)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the plot was not displayed"
    text = "".join(o.get("text", "") for o in outputs)
    assert "alignment_tanh" in text and "best layer" in text
    assert elapsed < 120, elapsed  # ~30-40 s on an idle 2-core machine
