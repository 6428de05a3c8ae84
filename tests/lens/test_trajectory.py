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


def test_table_shows_each_targets_rank(llama_tiny: HookedModel) -> None:
    """With tracked targets every cell ends in ``#rank`` (``/``-joined for several) and the title names them."""
    lens = LogitLens(llama_tiny)
    one = lens.decode([5, 9, 13, 2], top_k=2, targets=[9])
    two = lens.decode([5, 9, 13, 2], top_k=2, targets=[9, 40])
    plain = lens.decode([5, 9, 13, 2], top_k=2)
    assert "#" not in plain.table() and "rank of target" not in plain.table()
    assert "(#n: rank of target \"9\")" in one.table().splitlines()[0]
    assert "rank of targets \"9\", \"40\"" in two.table().splitlines()[0]
    for t in (one, two):
        rows = t.table(width=40).splitlines()[3:-1]  # the reading rows
        for r, row in enumerate(rows):
            cells = row.split("  ")[1:]
            cells = [c for c in cells if c]
            assert len(cells) == len(t.positions)
            for c, cell in enumerate(cells):
                want = "/".join(f"#{int(k)}" for k in t.target_rank[r, c])
                assert cell.endswith(" " + want), (cell, want)


def test_first_top1_is_the_first_reading_where_the_target_is_top(llama_tiny: HookedModel) -> None:
    lens = LogitLens(llama_tiny, sites="all")
    prompt = [5, 9, 13, 2, 7]
    probe = lens.decode(prompt, top_k=1)
    target = int(probe.top_ids[-1, -1, 0])  # the output's top token at the last position: top-1 somewhere
    never = next(i for i in range(llama_tiny.d_vocab) if not bool((probe.top_ids[:, :, 0] == i).any()))

    def brute(t, tid: int) -> list:
        return [next((t.readings[r] for r in range(len(t.readings)) if int(t.top_ids[r, c, 0]) == tid), None)
                for c in range(len(t.positions))]

    expected = brute(probe, target)
    assert expected[-1] is not None
    assert probe.first_top1(target) == expected  # untracked: judged by the top-1 id
    assert probe.first_top1(str(target)) == expected  # no tokenizer: token strings are the ids
    tracked = lens.decode(prompt, top_k=1, targets=[target, never])
    assert tracked.first_top1(target) == expected  # tracked: judged by rank 1
    assert tracked.first_top1(never) == [None] * len(prompt)
    batch = lens.decode([prompt, prompt[:3]], top_k=1)
    assert batch.first_top1(target)[0] == expected and len(batch.first_top1(target)[1]) == 3
    with pytest.raises(InputError, match="token string or id"):
        probe.first_top1(1.5)  # type: ignore[arg-type]


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
