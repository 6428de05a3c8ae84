"""``lmscope probe`` and ``lmscope attribute``: user errors exit 2; real runs on SmolLM2 (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmscope.interventions import cli


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_probe_user_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        ([str(tmp_path / "missing.jsonl")], "Cannot read"),
        ([_jsonl(tmp_path / "a.jsonl", ["{not json"])], "a.jsonl:1 is not JSON"),
        ([_jsonl(tmp_path / "b.jsonl", [{"prompt": "x"}])], "needs an object with 'prompt' and 'label'"),
        ([_jsonl(tmp_path / "c.jsonl", [""])], "holds no examples"),
        ([_jsonl(tmp_path / "d.jsonl", [{"prompt": "x", "label": 1}]), "--positions", "middle"], "--positions"),
    ]
    for argv, message in cases:
        assert cli.main(["probe", *argv, "--out", str(tmp_path / "ds")]) == 2
        err = capsys.readouterr().err
        assert message in err, (argv, err)
    assert cli.main(["attribute", "hi", "--target", " x", "--top", "0"]) == 2
    assert "--top" in capsys.readouterr().err



@pytest.mark.slow
def test_probe_cli_end_to_end(use_smollm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nouns = ["dog", "cat", "bird", "house", "car", "tree", "book", "child", "horse", "river", "table", "song"]
    rows = [{"prompt": f"The {n}", "label": "singular"} for n in nouns]
    rows += [{"prompt": f"The {n}s" if n != "child" else "The children", "label": "plural"} for n in nouns]
    data = _jsonl(tmp_path / "num.jsonl", rows)
    argv = ["probe", data, "--out", str(tmp_path / "ds"), "--sites", "resid_post.0,resid_post.10", "--cv", "3",
            "--plot", str(tmp_path / "p.png"), "--json", str(tmp_path / "r.json")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "resid_post.10" in out and "best site by selectivity" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["classes"] == ["plural", "singular"] and len(result["rows"]) == 2
    assert (tmp_path / "p.png").stat().st_size > 1000
    bad = _jsonl(tmp_path / "one.jsonl", rows[:5] + rows[-1:])
    assert cli.main(["probe", bad, "--out", str(tmp_path / "ds2"), "--sites", "resid_post.0"]) == 2
    assert "only 1 example" in capsys.readouterr().err


@pytest.mark.slow
def test_attribute_cli(use_smollm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["attribute", "The capital of France is", "--target", " Paris", "--contrast", " London", "--top", "5",
            "--plot", str(tmp_path / "h.png"), "--json", str(tmp_path / "t.json")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[0]
    logit, total = float(head.split("= ")[1].split(";")[0]), float(head.split("sum of terms = ")[1].split()[0])
    assert logit == pytest.approx(total, abs=1e-3) and logit > 0
    assert "mostly from token" in out and (tmp_path / "h.png").exists()
    terms = json.loads((tmp_path / "t.json").read_text())["terms"]
    assert len(terms) == 30 * 9 + 30 * 2 + 2
    assert cli.main(["attribute", "The capital of France is", "--target", " Parisian city"]) == 2
    assert "not one" in capsys.readouterr().err
