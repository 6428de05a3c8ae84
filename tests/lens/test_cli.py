"""``lmscope`` CLI: argument handling, decode output (table/JSON/plots), plug-in subcommands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmscope.interventions import cli


@pytest.mark.parametrize("argv, message", [
    (["decode", "hi", "--lens", "nope"], "Unknown --lens"),
    (["decode", ""], "empty"),
    (["decode", "hi", "--plot", "x.jpg"], ".png or .html"),
    (["decode", "hi", "--layers", "1-x"], "--layers"),
    (["decode", "hi", "--top-k", "0"], "--top-k"),
    (["decode", "hi", "--model", "/nonexistent/model"], "No model at"),
])
def test_user_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


@pytest.mark.parametrize("command", ["decode", "eval-lens"])
def test_tuned_lens_for_another_model_refused_before_loading(command: str, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """No default tuned lens exists for Gemma: the error comes before the (slow) model load, which never runs."""
    from lmscope.interventions import HookedModel

    def no_load(*a: object, **k: object) -> None:
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(HookedModel, "from_pretrained", classmethod(no_load))
    argv = [command, "hi"] if command == "decode" else [command]
    assert cli.main(argv + ["--model", "gemma-3-270m", "--lens", "tuned"]) == 2
    err = capsys.readouterr().err
    assert "--lens tuned without a folder only exists for the default model" in err and "--lens logit" in err


@pytest.mark.parametrize("name", ["default", "smollm2-135m", "SmolLM2-135M-Instruct", "smollm2"])
def test_tuned_lens_accepts_every_name_of_the_default_model(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--model smollm2-135m --lens tuned`` is the default model under another name: it gets the default lens."""
    from lmscope.lens import cli as lens_cli
    from lmscope.lens.training import fit

    lens_cli.check_lens_arg("tuned", name)  # no CliError
    sentinel = object()
    monkeypatch.setattr(fit, "default_lens", lambda model: sentinel)
    assert lens_cli.lens_from_spec("tuned", object(), lens_cli.is_default_model_name(name)) is sentinel
    assert not lens_cli.is_default_model_name("gemma-3-270m")



@pytest.mark.slow
def test_decode_json_table_and_plots(use_smollm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["decode", "The capital of France is", "--json", "--positions", "last",
                     "--layers", "0,-1", "--target", " Paris", "--plot", str(tmp_path / "h.png")]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["readings"] == ["resid_post.0", "resid_post.29"] and data["top_tokens"][-1][0][0] == " Paris"
    assert data["target_rank"][-1][0][0] == 1 and (tmp_path / "h.png").is_file()

    assert cli.main(["decode", "The capital of France is", "--layers", "28-29", "--mid", "--top-k", "2",
                     "--plot", str(tmp_path / "h.html"), "--color", "kl"]) == 0
    table = capsys.readouterr().out
    assert "resid_mid.28" in table and '" Paris"' in table and (tmp_path / "h.html").is_file()

    # --target shows the target's rank in the printed table too, not only in JSON
    assert cli.main(["decode", "The capital of France is", "--layers", "0,-1", "--positions", "last",
                     "--target", " Paris"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert 'rank of target " Paris"' in lines[0]
    assert lines[-2].startswith("resid_post.29") and lines[-2].endswith(" #1")  # " Paris" is top at the end
    assert re.search(r" #\d+$", lines[-3]) and lines[-3].startswith("resid_post.0")

    assert cli.main(["decode", "hi", "--layers", "30"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert cli.main(["decode", "hi", "--layers", "-1", "--positions", "last", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["readings"] == ["resid_post.29"]


@pytest.mark.slow
def test_decode_subprocess_default_model(smollm) -> None:
    proc = subprocess.run([sys.executable, "-m", "lmscope.interventions.cli", "decode", "The capital of France is",
                           "--json", "--positions", "last", "--timings"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["top_tokens"][-1][0][0] == " Paris" and len(data["readings"]) == 30
    assert "timings:" in proc.stderr
