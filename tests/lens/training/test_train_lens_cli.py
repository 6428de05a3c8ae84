"""``lmscope train-lens`` / ``eval-lens`` in lmscope's voice: the run announced before it starts, no raw
``UserWarning`` for a resume without a checkpoint, rounded final numbers, globs checked before the model loads, and
no silent overwrite of another run's lens."""

from __future__ import annotations

import json
import random
import re
import warnings
from pathlib import Path

import pytest
from tiny_models import build_tiny

from lmscope.interventions import HookedModel
from lmscope.interventions.cli import main

SEQ = 32
SMALL = ["--tokens-per-step", str(2 * SEQ), "--seq-len", str(SEQ), "--init-tokens", str(4 * SEQ), "--quiet"]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of text (four files of seeded word salad) and a tiny LLaMA saved as a model folder."""
    words = "a quick brown fox jumps over the lazy dog while seven cats watch from the old wall".split()
    text = tmp_path / "text"
    text.mkdir()
    draw = random.Random(1).choice
    for name in ("d0", "d1", "d2", "d3"):
        (text / f"{name}.txt").write_text(" ".join(draw(words) for _ in range(300)))
    model_dir = tmp_path / "model"
    build_tiny("llama").cpu().save_pretrained(model_dir)
    return text, model_dir


def train(text: Path, model_dir: Path, out: Path, *extra: str) -> int:
    return main(["train-lens", str(text), "--model", str(model_dir), "--out", str(out), *SMALL, *extra])


def test_resume_without_checkpoint_is_one_notice_not_a_warning(setup, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    text, model_dir = setup
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train(text, model_dir, tmp_path / "lens", "--steps", "2", "--resume") == 0
    assert not [w for w in caught if "resume=True" in str(w.message)]  # the raw UserWarning of before
    err = capsys.readouterr().err
    notice = [line for line in err.splitlines() if "no checkpoint" in line]
    assert notice == [f"lmscope: no checkpoint in {tmp_path / 'lens'}.ckpt to resume from; training from the "
                      "beginning."]
    assert "UserWarning" not in err and "warnings.warn" not in err


def test_announced_before_loading_and_final_numbers_rounded(setup, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    text, model_dir = setup
    assert train(text, model_dir, tmp_path / "a", "--steps", "2") == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("lmscope: train-lens fits a closed-form fit on 128 tokens, then 2 KL fine-tune "
                               "steps of 64 tokens") and "2 idle CPU cores" in lines[0]
    saved = lines[-1]
    kl = re.search(r"final train KL (\S+) nats/token$", saved)
    assert kl is not None and re.fullmatch(r"\d+\.\d{4}", kl.group(1)), saved
    recorded = json.loads((tmp_path / "a" / "config.json").read_text())["meta"]["training"]
    assert len(repr(recorded["final_train_kl"])) <= 11  # float32's digits, not a float64 tail of noise
    assert abs(recorded["final_train_kl"] - float(kl.group(1))) < 1e-4
    assert all(v == round(v, 2) for k, v in recorded.items() if k.endswith("_s"))
    assert train(text, model_dir, tmp_path / "b", "--steps", "0") == 0
    saved = capsys.readouterr().err.splitlines()[-1]
    assert "None" not in saved and saved.endswith("closed-form fit only (--steps 0: no KL step, so no train KL)")


def test_globs_checked_before_the_model_loads(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, model_dir = setup

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the corpus was checked")

    monkeypatch.setattr(HookedModel, "from_pretrained", classmethod(no_load))
    nothing = str(tmp_path / "nothing*.txt")
    assert main(["eval-lens", nothing, "--model", str(model_dir), "--max-tokens", "64", "--quiet"]) == 2
    assert main(["train-lens", nothing, "--model", str(model_dir), "--out", str(tmp_path / "l")]) == 2
    err = capsys.readouterr().err
    assert err.count("matches no files") == 2 and "AssertionError" not in err


def test_another_runs_lens_is_not_replaced_silently(setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's old CLI block: a fine-tuned lens, then ``--steps 0`` into the same folder replaced it."""
    text, model_dir = setup
    out = tmp_path / "my-lens"
    assert train(text, model_dir, out, "--steps", "2") == 0
    before = (out / "lens.safetensors").read_bytes()
    capsys.readouterr()
    assert train(text, model_dir, out, "--steps", "0") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lmscope: error: --out '{out}' already holds a tuned lens from another run (steps 2 "
                          "there, 0 here); this run would replace it. Pass --force")
    assert (out / "lens.safetensors").read_bytes() == before  # untouched
    assert train(text, model_dir, out, "--steps", "2") == 0  # the same kind of run replaces it, as before
    assert train(text, model_dir, out, "--steps", "0", "--force") == 0
    assert json.loads((out / "config.json").read_text())["meta"]["training"]["steps"] == 0


def test_a_folder_of_something_else_is_refused(setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, model_dir = setup
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    assert train(text, model_dir, notes, "--steps", "0") == 2
    assert "already holds other files; this command would replace it with a tuned lens" in capsys.readouterr().err
    assert (notes / "todo.txt").read_text() == "mine"

