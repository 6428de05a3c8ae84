"""The binding-ID notebook executes end to end at small size (LMSCOPE_NOTEBOOK_SMALL=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[3] / "notebooks" / "binding_ids.ipynb"


@pytest.mark.slow
def test_binding_notebook_runs(smollm) -> None:  # smollm: skip when the default model is missing
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
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3, "the three figures were not displayed"
    text = "".join(o.get("text", "") for o in outputs)
    assert "binding-ID signature" in text and "paper 30B" in text
