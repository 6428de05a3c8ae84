"""The one way tests execute a case-study notebook: small sizes, nbclient, outputs returned for assertions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


def run_notebook(name: str, timeout: int = 600) -> tuple[list[dict[str, Any]], str]:
    """Execute ``notebooks/<name>`` with ``LMSCOPE_NOTEBOOK_SMALL=1``; return (outputs, their text).

    Skips when the notebook tooling is missing; fails on any error output.
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    os.environ["LMSCOPE_NOTEBOOK_SMALL"] = "1"
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent.parent)}}).execute()
    finally:
        os.environ.pop("LMSCOPE_NOTEBOOK_SMALL", None)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors[0].get("traceback") if errors else None
    return outputs, "".join(o.get("text", "") for o in outputs)


def png_count(outputs: list[dict[str, Any]]) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)
