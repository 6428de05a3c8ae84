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
    assert r.top(2) == [("resid_pre.0", None, 2, 2.0, 3.0), ("resid_pre.1", None, 2, -1.5, -0.5)]
    assert r.top(1)[0].effect == 2.0 and r.top(1)[0].position == 2


def test_by_head_and_top_of_a_head_map() -> None:
    rows = [f"head_z.{layer}:h{h}" for layer in (1, 4) for h in range(3)]
    values = torch.arange(12.0).reshape(6, 2)
    r = PatchingResult(values, rows, ["0:a", "-1"], 3.0, 9.0, "exact")
    grid = r.by_head()
    assert grid.shape == (2, 3, 2) and r.head_layers() == [1, 4]
    for i, label in enumerate(rows):  # by_head == the values found by parsing the labels
        layer, head = int(label.split(".")[1].split(":")[0]), int(label.split(":h")[1])
        assert torch.equal(grid[[1, 4].index(layer), head], values[i])
    torch.testing.assert_close(r.by_head("effect"), grid - 3.0)
    top = r.top(3)
    assert [(t.site, t.head, t.position) for t in top] == [("head_z.4", 2, -1), ("head_z.4", 2, 0),
                                                           ("head_z.4", 1, -1)]
    assert [t.effect for t in top] == [8.0, 7.0, 6.0]
    one = PatchingResult(values[:, :1], rows, ["all"], 0.0, 1.0, "exact")
    assert one.by_head().shape == (2, 3) and one.top(1)[0].position is None
    with pytest.raises(InputError, match="needs a head sweep"):
        _result().by_head()
    with pytest.raises(InputError, match="every head"):
        PatchingResult(values[:5], rows[:5], ["0:a", "-1"], 0.0, 1.0, "exact").by_head()
    with pytest.raises(InputError, match="no stderr"):
        r.by_head("stderr")


def test_dataset_fields_round_trip(tmp_path: Path) -> None:
    per_pair = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(0))
    r = PatchingResult(per_pair.mean(0), ["resid_pre.0", "resid_pre.1"], ["0", "1", "2"], 0.5, 2.0, "exact",
                       per_pair=per_pair, stderr=per_pair.std(0) / 3 ** 0.5, pair_base_metrics=[0.0, 0.5, 1.0],
                       pair_source_metrics=[1.0, 2.0, 3.0])
    back = PatchingResult.load(r.save(tmp_path / "res", png=False))
    assert back.per_pair is not None and back.stderr is not None
    assert torch.equal(back.per_pair, per_pair) and torch.equal(back.stderr, r.stderr)
    assert back.pair_base_metrics == [0.0, 0.5, 1.0] and back.pair_source_metrics == [1.0, 2.0, 3.0]
    with pytest.raises(InputError, match="per_pair has shape"):
        PatchingResult(per_pair.mean(0), ["a", "b"], ["0", "1", "2"], 0.0, 1.0, "exact", per_pair=torch.zeros(3, 2))


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
