"""``--model`` / ``from_pretrained`` names (issue 21): a hub id ``org/name`` is not a missing path, and without a
network a hub id fails in about a second with one line that says how to load local files (or loads from the
Hugging Face cache when it is there)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lmscope.interventions import cli, hub
from lmscope.interventions.cli import CliError, check_model_arg
from lmscope.interventions.errors import OfflineError

ROOT = Path(__file__).resolve().parents[2]


def _fake_cache(root: Path, hub_id: str, files: dict[str, str]) -> Path:
    """A Hugging Face hub cache holding ``hub_id`` at one snapshot (the layout huggingface_hub reads)."""
    repo = root / f"models--{hub_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, text in files.items():
        (snap / name).write_text(text)
    return snap


def test_hub_ids_and_paths() -> None:
    for name in ("gpt2", "EleutherAI/pythia-160m", "meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-0.5B"):
        assert hub.looks_like_hub_id(name), name
    for name in ("./gpt2", "../m", "/abs/model", "a/b/c", "model.gguf", "org/../x", "", "-x"):
        assert not hub.looks_like_hub_id(name), name


def test_org_name_is_a_hub_id_not_a_missing_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0.8: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert check_model_arg("EleutherAI/pythia-160m") == "EleutherAI/pythia-160m"  # refused as a path before
    assert check_model_arg("default") == "default" and check_model_arg("gemma-3-270m") == "gemma-3-270m"
    with pytest.raises(CliError, match=r"No model at 'models/a/b': no such folder or file"):
        check_model_arg("models/a/b")
    with pytest.raises(CliError, match=r"No model at 'x\.gguf'"):
        check_model_arg("x.gguf")


def test_offline_hub_id_fails_fast_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0.8: False)
    monkeypatch.setattr(hub, "cached_snapshot", lambda hub_id: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(CliError) as err:
        check_model_arg("EleutherAI/pythia-160m")
    msg = str(err.value)
    assert "\n" not in msg and "there is no network" in msg and "HF_HUB_OFFLINE=1" in msg and "folder" in msg
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CliError, match="HF_HUB_OFFLINE is set and it is not in the local HF cache"):
        check_model_arg("gpt2")
    with pytest.raises(OfflineError):  # an OSError too, as transformers' own offline errors are
        hub.resolve_model_name("gpt2")
    assert issubclass(OfflineError, OSError)


def test_offline_hub_id_resolves_to_the_cached_snapshot(tmp_path: Path) -> None:
    """Without a network (HF_HUB_OFFLINE=1, and a bogus endpoint) a cached hub id becomes its snapshot folder."""
    snap = _fake_cache(tmp_path, "org/tiny", {"config.json": "{}"})
    code = "from lmscope.interventions.hub import resolve_model_name as r; print(r('org/tiny'))"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == snap


def test_hub_reachable_answers_within_its_timeout() -> None:
    start = time.perf_counter()
    assert hub.hub_reachable(0.5, host="no-such-host.invalid") is False
    assert time.perf_counter() - start < 1.5


@pytest.mark.skipif(hub.hub_reachable(), reason="this check is for a machine without a network")
def test_cli_offline_is_fast_and_one_line() -> None:
    """The real thing, offline: ``lmscope decode --model gpt2`` used to retry ~27 s and print two lines."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HUB_CACHE"] = tempfile.mkdtemp()  # an empty cache: gpt2 is not there
    for name in ("gpt2", "EleutherAI/pythia-160m"):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "lmscope.interventions.cli", "decode", "--model", name, "Hi"],
                              capture_output=True, text=True, env=env, timeout=120, cwd=tempfile.gettempdir())
        took = time.perf_counter() - start
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"lmscope: error: Cannot load {name!r} from the Hugging Face"), \
            proc.stderr
        assert "there is no network" in lines[0] and took < 5, took


@pytest.mark.slow
def test_from_pretrained_loads_a_cached_hub_id_offline(tmp_path: Path) -> None:
    """A tiny model saved into an HF cache loads by its hub id with HF_HUB_OFFLINE=1 (end to end)."""
    from tiny_models import build_tiny

    model = build_tiny("llama")
    snap = _fake_cache(tmp_path, "org/tiny-llama", {})
    model.save_pretrained(snap)
    code = ("import warnings; warnings.simplefilter('ignore')\n"
            "from lmscope import HookedModel\n"
            "m = HookedModel.from_pretrained('org/tiny-llama')\n"
            "print(m.arch.name, m.n_layers)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["llama", str(model.config.num_hidden_layers)]


def test_cli_help_names_hub_ids() -> None:
    import argparse

    p = argparse.ArgumentParser()
    cli.add_model_args(p)
    assert "EleutherAI/pythia-160m" in p.format_help()


def test_from_pretrained_offline_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python API too: no ~30 s of transformers retries, an OfflineError (an OSError) naming the way out."""
    from lmscope.interventions import HookedModel

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0.8: False)
    monkeypatch.setattr(hub, "cached_snapshot", lambda hub_id: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(OfflineError, match="there is no network"):
        HookedModel.from_pretrained("EleutherAI/pythia-160m")
    assert time.perf_counter() - start < 5
