"""Trajectory exports: JSON, table, PNG and offline HTML heatmaps."""

from __future__ import annotations

import json

import pytest

from lmscope.interventions import HookedModel, InputError
from lmscope.lens import LogitLens


@pytest.fixture
def traj(llama_tiny: HookedModel):
    return LogitLens(llama_tiny, sites="all").decode([5, 9, 13, 2], top_k=3, targets=[9])


def test_json_and_table(traj, tmp_path) -> None:
    data = json.loads(traj.to_json(tmp_path / "t.json"))
    assert json.loads((tmp_path / "t.json").read_text()) == data
    assert data["readings"][0] == "resid_mid.0" and len(data["top_probs"][0][0]) == 3
    assert data["target_rank"][0][0][0] >= 1
    table = traj.table()
    lines = table.splitlines()
    assert len(lines) == 1 + 1 + 1 + 6 + 1  # title, header, rule, readings, output
    assert lines[3].startswith("resid_mid.0") and "(output)" in lines[-1]
    assert "resid_post.2" in traj.table(show="kl")


@pytest.mark.parametrize("color", ["prob", "kl"])
def test_png_written(traj, tmp_path, color: str) -> None:
    out = traj.plot(tmp_path / "sub" / "h.png", color=color)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_written_offline(traj, tmp_path) -> None:
    out = traj.plot(tmp_path / "h.html", color="kl")
    html = out.read_text()
    assert "<html>" in html and "Plotly.newPlot" in html
    assert "cdn.plot.ly" not in html.split("Plotly.newPlot")[0][-2000:] and len(html) > 1_000_000  # js embedded


def test_bad_plot_arguments(traj, tmp_path) -> None:
    with pytest.raises(InputError):
        traj.plot(tmp_path / "h.txt")
    with pytest.raises(InputError):
        traj.plot(tmp_path / "h.png", color="entropy")


def test_batch_plot_one_file_per_prompt(llama_tiny: HookedModel, tmp_path) -> None:
    batch = LogitLens(llama_tiny).decode([[1, 2, 3], [4, 5]], top_k=1)
    paths = batch.plot(tmp_path / "b.png")
    assert [p.name for p in paths] == ["b_0.png", "b_1.png"] and all(p.is_file() for p in paths)


def test_heatmap_labels_draw_whitespace_visibly() -> None:
    from lmscope.lens.plot import _label, visible_token

    assert visible_token(" Paris") == "␣Paris" and visible_token(" ") == "␣" and visible_token("") == "∅"
    assert visible_token("\n\n") == "↵↵" and visible_token("\t") == "⇥" and visible_token("\x00\x1b") == "␀␛"
    assert visible_token("\u200b") == "\\u200b" and visible_token("é") == "é"
    assert _label("   ") == "␣␣␣" and _label(" abcdefghij") == "␣abcdef…"
