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
    grid = r.by_head(positions=True)
    assert grid.shape == (2, 3, 2) and r.head_layers() == [1, 4]
    for i, label in enumerate(rows):  # by_head == the values found by parsing the labels
        layer, head = int(label.split(".")[1].split(":")[0]), int(label.split(":h")[1])
        assert torch.equal(grid[[1, 4].index(layer), head], values[i])
    torch.testing.assert_close(r.by_head("effect", positions=True), grid - 3.0)
    top = r.top(3)
    assert [(t.site, t.head, t.position) for t in top] == [("head_z.4", 2, -1), ("head_z.4", 2, 0),
                                                           ("head_z.4", 1, -1)]
    assert [t.effect for t in top] == [8.0, 7.0, 6.0]
    one = PatchingResult(values[:, :1], rows, ["all"], 0.0, 1.0, "exact")
    assert one.by_head().shape == (2, 3) and one.top(1)[0].position is None
    with pytest.raises(InputError, match="needs a head sweep"):
        _result().by_head(positions=True)
    with pytest.raises(InputError, match="every head"):
        PatchingResult(values[:5], rows[:5], ["0:a", "-1"], 0.0, 1.0, "exact").by_head(positions=True)
    with pytest.raises(InputError, match="no stderr"):
        r.by_head("stderr", positions=True)


def test_by_head_is_layers_by_heads_whatever_the_one_position() -> None:
    """One column is [layers, heads] whether it is 'all' or a single token index; several columns need
    positions=True (then [layers, heads, positions], also for one column)."""
    rows = [f"head_z.{layer}:h{h}" for layer in (1, 4) for h in range(3)]
    values = torch.arange(12.0).reshape(6, 2)
    for cols in (["all"], ["-1"], ["7: Paris"]):
        r = PatchingResult(values[:, 1:], rows, cols, 3.0, 9.0, "exact")
        assert r.by_head().shape == (2, 3) and r.by_head("normalized").shape == (2, 3)
        assert r.by_head(positions=True).shape == (2, 3, 1)
        torch.testing.assert_close(r.by_head(), r.by_head(positions=True)[..., 0])
    two = PatchingResult(values, rows, ["0:a", "-1"], 3.0, 9.0, "exact")
    with pytest.raises(InputError, match=r"by_head\(\) is \[layers, heads\], but this map has 2 position columns "
                                         r"\('0:a', '-1'\); pass positions=True"):
        two.by_head()
    assert two.by_head(positions=True).shape == (2, 3, 2)


def _pairs_result(per_pair: torch.Tensor, base: list[float], source: list[float]) -> PatchingResult:
    rows = [f"head_z.0:h{h}" for h in range(per_pair.shape[1])]
    return PatchingResult(per_pair.mean(0), rows, ["all"], sum(base) / len(base), sum(source) / len(source),
                          "exact", per_pair=per_pair, pair_base_metrics=base, pair_source_metrics=source)


def test_standard_errors_are_paired() -> None:
    """Pairs with very different baselines: a null cell (patched == each pair's base) has paired standard errors 0
    (effect and normalised), a cell restoring each pair fully (patched == each pair's source) a normalised one of 0
    (its effect is each pair's gap); the raw metric's standard error is the baselines' spread. A noisy cell's paired
    s.e. is that of its per-pair effects."""
    base, source = [0.0, 4.0, -2.0, 1.0], [3.0, 9.0, 0.0, 5.0]  # gaps 3, 5, 2, 4
    noise = [0.5, -0.25, 1.0, 0.0]
    per_pair = torch.tensor([[b, s, b + e] for b, s, e in zip(base, source, noise)])[..., None]  # [4 pairs, 3, 1]
    r = _pairs_result(per_pair, base, source)
    assert r.stderr is not None and r.stderr_normalized is not None and r.stderr_raw is not None
    assert float(r.stderr[0, 0]) == 0.0
    assert float(r.stderr[1, 0]) == pytest.approx(float(torch.tensor([3.0, 5.0, 2.0, 4.0]).std() / 2))  # the gaps
    torch.testing.assert_close(r.stderr_normalized[:2, 0], torch.zeros(2))
    raw = torch.tensor(base).std() / 2
    assert float(r.stderr_raw[0, 0]) == pytest.approx(float(raw)) and float(raw) > 1.0
    assert float(r.stderr[2, 0]) == pytest.approx(float(torch.tensor(noise).std() / 2))
    torch.testing.assert_close(r.by_head("stderr"), r.stderr[:, 0][None])
    torch.testing.assert_close(r.by_head("stderr_raw"), r.stderr_raw[:, 0][None])
    torch.testing.assert_close(r.by_head("stderr_normalized"), r.stderr_normalized[:, 0][None])


def test_normalized_stderr_with_equal_gaps_is_that_of_the_per_pair_ratios() -> None:
    base = [0.0, 1.0, -3.0, 2.0, 0.5]
    source = [b + 2.0 for b in base]  # every pair's gap is 2
    effects = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    per_pair = (effects + torch.tensor(base)[:, None])[..., None]
    r = _pairs_result(per_pair, base, source)
    assert r.stderr_normalized is not None
    torch.testing.assert_close(r.stderr_normalized[:, 0], (effects / 2.0).std(0) / 5 ** 0.5)
    torch.testing.assert_close(r.normalized()[:, 0], effects.mean(0) / 2.0)
    with pytest.raises(InputError, match="has 4 entries; per_pair has 5"):
        _pairs_result(per_pair, base[:4], source[:4])


def test_dataset_fields_round_trip(tmp_path: Path) -> None:
    per_pair = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(0))
    r = PatchingResult(per_pair.mean(0), ["resid_pre.0", "resid_pre.1"], ["0", "1", "2"], 0.5, 2.0, "exact",
                       per_pair=per_pair, pair_base_metrics=[0.0, 0.5, 1.0], pair_source_metrics=[1.0, 2.0, 3.0])
    back = PatchingResult.load(r.save(tmp_path / "res", png=False))
    assert back.per_pair is not None and back.stderr is not None and r.stderr is not None
    assert torch.equal(back.per_pair, per_pair) and torch.equal(back.stderr, r.stderr)
    data = json.loads((tmp_path / "res" / "patching.json").read_text())
    assert data["stderr"] == r.stderr.tolist() and data["stderr_raw"] == (per_pair.std(0) / 3 ** 0.5).tolist()
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
