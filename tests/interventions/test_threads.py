"""lmscope's default torch thread count: the cores other processes leave free (at least 1, never above torch's own
count), once per process at the first CPU model load, said in one line; LMSCOPE_THREADS / OMP_NUM_THREADS /
--threads / torch.set_num_threads choose instead."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator

import pytest
import torch
from tiny_models import build_tiny

from lmscope.interventions import HookedModel, threads
from lmscope.interventions.cli import load_model
from lmscope.interventions.errors import InputError


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No choice made yet in this process, no thread variables set, torch at 2 threads; restored afterwards."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_chosen", False)
    for name in (threads.ENV, *threads.TORCH_ENVS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "_at_import", 2)
    yield
    torch.set_num_threads(before)


def _busy(monkeypatch: pytest.MonkeyPatch, busy: float, cpus: int = 2) -> None:
    monkeypatch.setattr(threads, "busy_cores", lambda window=threads.WINDOW: (busy, cpus))


@pytest.mark.parametrize(("busy", "cpus", "want"), [(1.9, 2, 1), (1.2, 2, 1), (0.4, 2, 2), (0.0, 2, 2), (3.0, 4, 1),
                                                    (0.0, 8, 2)])
def test_the_default_is_the_cores_other_processes_leave_free(fresh: None, monkeypatch: pytest.MonkeyPatch,
                                                             busy: float, cpus: int, want: int) -> None:
    """(0.0, 8): eight idle cores but only two usable (affinity/quota) and torch at 2: never more than either."""
    _busy(monkeypatch, busy, cpus)
    n, why = threads.default_threads()
    assert n == want and f"{busy:.1f} of the {cpus} cores busy" in why


def test_variables_choose_instead(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _busy(monkeypatch, 1.9)
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.default_threads() == (3, "LMSCOPE_THREADS=3")
    monkeypatch.setenv(threads.ENV, "torch")
    assert threads.default_threads()[0] == 2
    monkeypatch.setenv(threads.ENV, "two")
    with pytest.raises(InputError, match="LMSCOPE_THREADS must be a number of threads .* got 'two'"):
        threads.default_threads()
    monkeypatch.delenv(threads.ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.default_threads() == (2, "OMP_NUM_THREADS is set")


def test_a_count_set_before_loading_stands(fresh: None, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``torch.set_num_threads(n)`` between importing lmscope and loading (as the benchmarks' --threads do) wins."""
    _busy(monkeypatch, 1.9)
    torch.set_num_threads(3)
    assert threads.default_threads() == (3, "torch.set_num_threads was called")
    assert threads.apply_default_threads() == 3 and capsys.readouterr().err == ""


def test_a_bad_variable_is_refused_at_every_load(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(threads.ENV, "two")
    for _ in range(2):  # not only the first: a later load must not silently ignore it
        with pytest.raises(InputError, match="got 'two'"):
            threads.apply_default_threads()


def test_applied_once_per_process_and_said_in_one_line(fresh: None, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _busy(monkeypatch, 1.9)
    assert threads.apply_default_threads() == 1 and torch.get_num_threads() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lmscope: using 1 torch thread, not 2: other processes keep 1.9")
    assert "LMSCOPE_THREADS=N" in err and "--threads N" in err
    torch.set_num_threads(2)  # the user's later choice stands: the default is not applied again
    assert threads.apply_default_threads() == 2 and torch.get_num_threads() == 2
    assert capsys.readouterr().err == ""


def test_from_pretrained_applies_it_on_the_cpu(fresh: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    build_tiny("llama").cpu().save_pretrained(tmp_path / "m")  # safetensors reads CPU storage
    _busy(monkeypatch, 1.9)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No tokenizer files")
        model = HookedModel.from_pretrained(tmp_path / "m")
    assert torch.get_num_threads() == 1 and model.n_layers == 3


def test_threads_option_wins(fresh: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """--threads N (load_model's threads=): that many, and the default stays out, whatever the load."""
    build_tiny("llama").cpu().save_pretrained(tmp_path / "m")  # safetensors reads CPU storage
    _busy(monkeypatch, 1.9)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No tokenizer files")
        load_model(str(tmp_path / "m"), threads=2)
    assert torch.get_num_threads() == 2 and "lmscope: using" not in capsys.readouterr().err
    with pytest.raises(InputError, match="must be at least 1, got 0"):
        threads.use_threads(0)


def test_busy_cores_reads_this_machine() -> None:
    busy, cpus = threads.busy_cores(0.05)
    assert cpus >= 1 and 0.0 <= busy <= cpus + 0.5  # (tick rounding)
    assert 1 <= threads.usable_cores() <= (os.cpu_count() or 1)
