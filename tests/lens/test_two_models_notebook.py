"""The two-models lens case study (SmolLM2 vs Gemma 3 270M) executes end to end (small sizes) with nbclient."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from notebook_runner import run_notebook

NOTEBOOK = Path(__file__).parent.parent.parent / "notebooks" / "two_models.ipynb"


@pytest.mark.slow
def test_two_models_notebook_runs() -> None:
    from lmscope.interventions.defaults import GEMMA3_270M, default_gguf_path, gguf_path

    try:  # skip when either real model is not installed (without loading them here: the kernel does)
        default_gguf_path()
        gguf_path(GEMMA3_270M)
    except Exception as err:  # pragma: no cover - make test installs them
        pytest.skip(f"a real model is not installed: {err}")
    outputs, text = run_notebook(NOTEBOOK.name, timeout=300)
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 3, "the rank/probability figure and one heat map per model"
    assert "Gemma 3  layers 18" in text and "SmolLM2  layers 30" in text
    # the Eiffel Tower prompt is known by both models, so it is decoded by every lens
    known = re.search(r"known by both \(answer top-1\): (\d+) of (\d+)", text)
    assert known and int(known.group(1)) >= 1, text
    assert "The Eiffel Tower is in the city of" in text.split("first becomes top-1")[1]
    # the logit lens at the last reading is the model's own output (Gemma: final norm + logit handling)
    for label in ("SmolLM2 logit", "Gemma 3 logit"):
        kl = float(re.search(re.escape(label) + r": \d+ readings; KL.*?: (\S+)", text).group(1))
        assert kl < 1e-4, (label, kl)
    assert "Median answer rank over the known prompts" in text
