"""The overthinking report's numbers read as short decimals (its float32 results without a float64 tail)."""

from __future__ import annotations

import json

from toys import toy_model, toy_task

from lmscope.interventions.numbers import float32_clean_all
from lmscope.lens import LogitLens
from lmscope.probes.overthinking.study import run_study


def test_report_numbers_are_short_decimals() -> None:
    """6 prompts: accuracies are multiples of 1/6, which float32 stores as 0.16666667 (float64 tail:
    0.1666666716337204); the JSON carries the short form, and reading it back as float32 gives the same value."""
    model = toy_model("llama")
    report = run_study(model, toy_task(), score_task=None, n_prompts=6, n_demos=4, lenses={"logit": LogitLens(model)},
                       top_k=2, n_random=3, batch_size=6, progress=False, figures=False)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    numbers = {k: v for k, v in data.items() if k not in ("timings", "config")}
    text = json.dumps(numbers)
    assert any(x in text for x in ("0.16666667", "0.8333333", "0.6666667", "0.33333334")), text[:500]
    assert float32_clean_all(numbers) == numbers
