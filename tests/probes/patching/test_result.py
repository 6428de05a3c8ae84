"""PatchingResult: normalisation, save/load round trip (JSON + safetensors + PNG), plot, shape checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmscope.interventions import InputError
from lmscope.probes.patching import PatchingResult


def _result() -> PatchingResult:
    values = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.5, -0.5]])
    return PatchingResult(values, ["resid_pre.0", "resid_pre.1"], ["0:a", "1:b", "2:c"], 1.0, 3.0, "exact",
                          extras={"relative_delta": torch.ones(2, 3)}, notes=["n"])


def test_normalized_effect_and_top() -> None:
    r = _result()
    torch.testing.assert_close(r.normalized(), torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.25, -0.75]]))
    assert r.top(2) == [("resid_pre.0", "2:c", 3.0), ("resid_pre.1", "2:c", -0.5)]


def test_save_load_round_trip_writes_json_tensors_and_png(tmp_path: Path) -> None:
    r = _result()
    out = r.save(tmp_path / "res")
    assert {p.name for p in out.iterdir()} == {"patching.json", "tensors.safetensors", "heatmap.png"}
    data = json.loads((out / "patching.json").read_text())
    assert data["values"] == r.values.tolist() and data["rows"] == r.row_labels
    back = PatchingResult.load(out)
    torch.testing.assert_close(back.values, r.values)
    torch.testing.assert_close(back.extras["relative_delta"], r.extras["relative_delta"])
    assert (back.row_labels, back.col_labels, back.notes, back.base_metric) == (r.row_labels, r.col_labels,
                                                                               r.notes, r.base_metric)


def test_errors() -> None:
    with pytest.raises(InputError, match="labels give"):
        PatchingResult(torch.zeros(2, 2), ["a"], ["x", "y"], 0.0, 1.0, "exact")
    with pytest.raises(InputError, match="nothing to normalise"):
        PatchingResult(torch.zeros(1, 1), ["a"], ["x"], 1.0, 1.0, "exact").normalized()
    with pytest.raises(InputError, match="not an lmscope artifact"):
        PatchingResult.load("/nonexistent/folder")
