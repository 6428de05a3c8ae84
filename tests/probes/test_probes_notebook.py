"""The probes notebook executes end to end at small sizes (LMSCOPE_NOTEBOOK_SMALL=1) with nbclient."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parent.parent.parent / "notebooks" / "probes.ipynb"


@pytest.mark.slow
def test_probes_notebook_runs(smollm) -> None:  # smollm: skip when the default model is missing
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["LMSCOPE_NOTEBOOK_SMALL"] = "1"
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOK.parent.parent)}}).execute()
    finally:
        os.environ.pop("LMSCOPE_NOTEBOOK_SMALL", None)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3, "sweep, heat map and ROC must be shown"
    text = "".join(o.get("text", "") for o in outputs)
    assert "best layer by selectivity" in text and "sum of terms" in text and "AUROC injected vs plain" in text
