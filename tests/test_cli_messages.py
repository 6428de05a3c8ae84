"""The commands' messages in lmscope's voice, all before any model loads: whitespace-only prompts refused like empty
ones, a reversed layer range called reversed, a missing ``--model`` named as both a possible typo and a hub id, the
overthinking study saying when heads are scored on another task, and output folders of another kind of artifact
never replaced silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmscope.interventions import HookedModel, cli, hub
from lmscope.interventions.cli import CliError


@pytest.fixture(autouse=True)
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every check here must answer before a model loads."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(HookedModel, "from_pretrained", classmethod(refuse))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.strip()


@pytest.mark.parametrize("argv, message", [
    (["decode", " \n\t "], "The prompt is only whitespace; give some text to decode."),
    (["decode", ""], "The prompt is empty; give some text to decode."),
    (["attribute", "   ", "--target", " Paris"], "The prompt is only whitespace; give some text."),
    (["steer", "  ", "--pairs", "sentiment", "--layer", "3", "--scale", "1"],
     "The prompt is only whitespace; give some text to continue."),
    (["patch", "--clean", "  ", "--corrupt", "b", "--target", "x", "--out", "o"],
     "--clean is only whitespace; give the clean prompt."),
])
def test_whitespace_prompts_are_refused_like_empty_ones(argv: list[str], message: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(argv, capsys) == f"lmscope: error: {message}"


@pytest.mark.parametrize("command", [["decode", "hi"],
                                     ["patch", "--clean", "a", "--corrupt", "b", "--target", "x", "--out", "o"]])
def test_reversed_layer_range_says_reversed(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(command + ["--layers", "10-5"], capsys) == \
        "lmscope: error: --layers range '10-5' is reversed (it ends before it starts): write '5-10'."


def test_a_mistyped_model_names_both_possibilities(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0.8: False)
    monkeypatch.setattr(hub, "cached_snapshot", lambda hub_id: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    err = run(["decode", "Hello", "--model", "my-modle"], capsys)
    assert "\n" not in err
    assert "a typo in a local path?" in err and "there is no network" in err  # both possibilities
    with pytest.raises(CliError, match="nor is there a folder or file of that name here"):
        cli.check_model_arg("my-modle")


@pytest.mark.parametrize("score, note", [("unnatural", True), ("same", False)])
def test_overthinking_says_when_heads_are_scored_on_another_task(score: str, note: bool, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from lmscope.probes.overthinking import cli as overthinking_cli

    def stop(args: object) -> None:
        raise CliError("stopped where the model would load")

    monkeypatch.setattr(overthinking_cli, "model_from_args", stop)
    err = run(["overthinking", "--task", "category", "--score-task", score, "--out", str(tmp_path / "o")], capsys)
    said = ("lmscope: heads are scored on another task than the study's: 'unnatural' with permuted labels (as the "
            "authors), the accuracy gap on 'category'; --score-task same scores them on 'category'.")
    assert err.splitlines() == ([said] if note else []) + ["lmscope: error: stopped where the model would load"]


def lens_folder(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text('{"type": "TunedLens"}')
    (path / "lens.safetensors").write_bytes(b"weights")
    return path


@pytest.mark.parametrize("argv, holds, writes", [
    (["patch", "--clean", "a", "--corrupt", "b", "--target", "x", "--out", "{out}"], "a tuned lens",
     "a patching result"),
    (["overthinking", "--task", "category", "--out", "{out}"], "a tuned lens", "an overthinking report"),
    (["steer", "hi", "--pairs", "sentiment", "--layer", "3", "--scale", "1", "--save", "{out}"], "a tuned lens",
     "a steering vector"),
])
def test_another_kind_of_artifact_is_not_replaced_silently(argv: list[str], holds: str, writes: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = lens_folder(tmp_path / "my-lens")
    err = run([a.replace("{out}", str(out)) for a in argv], capsys)
    option = "--save" if "--save" in argv else "--out"
    assert err == (f"lmscope: error: {option} '{out}' already holds {holds}; this command would replace it with "
                   f"{writes}. Pass --force to replace it, or choose another {option}.")
    assert (out / "lens.safetensors").read_bytes() == b"weights"
