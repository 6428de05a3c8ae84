"""``lmscope patch``: writes the map folder, prints a summary, refuses bad input with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny
from toys import CharTokenizer

from lmscope.interventions import cli
from lmscope.probes.patching import PatchingResult, logit_diff, patching_sweep


@pytest.fixture
def tiny_cli(monkeypatch: pytest.MonkeyPatch):
    from lmscope.interventions import HookedModel

    model = HookedModel(build_tiny("llama"), CharTokenizer())
    monkeypatch.setattr(HookedModel, "from_pretrained", classmethod(lambda cls, *a, **k: model))
    return model


def test_patch_writes_map_equal_to_the_api(tiny_cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "map"
    argv = ["patch", "--clean", "abcdef", "--corrupt", "abXdef", "--target", "a", "--distractor", "b",
            "--layers", "0-1", "--out", str(out)]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "exact" and summary["metric"] == "logit_diff" and len(summary["top"]) == 5
    result = PatchingResult.load(out)
    assert (out / "heatmap.png").is_file() and result.row_labels == ["resid_pre.0", "resid_pre.1"]
    api = patching_sweep(tiny_cli, "abcdef", "abXdef", ["resid_pre.0", "resid_pre.1"], None,
                         logit_diff(tiny_cli, "a", "b"))
    torch.testing.assert_close(result.values, api.values)

    assert cli.main(argv[:-2] + ["--site", "head_z", "--method", "attribution", "--out", str(out)]) == 0
    heads = PatchingResult.load(out)
    assert heads.col_labels == ["all"] and len(heads.row_labels) == 2 * tiny_cli.n_heads
    assert "relative_delta" in heads.extras


@pytest.mark.parametrize("extra, message", [
    (["--corrupt", "abc"], "same token length"),
    (["--target", "ab"], "not one"),
    (["--target", "a", "--distractor", "a"], "same token"),
    (["--layers", "1-x"], "--layers"),
    (["--layers", "7"], "out of range"),
])
def test_bad_input_exits_2(tiny_cli, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra, message) -> None:
    argv = ["patch", "--clean", "abcdef", "--corrupt", "abXdef", "--target", "a", "--out", str(tmp_path / "o")]
    assert cli.main(argv + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
