"""Data-parallel lens training: 2 gloo processes train the lens one process trains on the same tokens."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmscope.interventions import HookedModel, InputError
from lmscope.interventions.distributed import DataParallel
from lmscope.lens.lenses import TunedLens
from lmscope.lens.training.fit import train_tuned_lens


def _corpus(root: Path) -> Path:
    rng = random.Random(0)
    words = "the cat sat on a mat and then it ran to the old house where seven dogs live".split()
    root.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (root / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(400)))
    return root


def _model() -> HookedModel:
    from tiny_models import build_tiny

    return HookedModel(build_tiny("llama").cpu())


ARGS = ["--steps", "3", "--tokens-per-step", "64", "--seq-len", "16", "--init-tokens", "96", "--lr", "0.01",
        "--quiet", "--checkpoint-every", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2 lmscope train-lens`` (gloo, CPU) == the one-process command, same tokens."""
    text = str(_corpus(tmp_path / "text"))
    model = _model()
    model.hf_model.save_pretrained(tmp_path / "model")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cli = ["-m", "lmscope.interventions.cli", "train-lens", text, "--model", str(tmp_path / "model")]
    one = subprocess.run([sys.executable, *cli, "--out", str(tmp_path / "one"), *ARGS], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    two = subprocess.run([torchrun, "--nproc_per_node=2", f"--master_port={_free_port()}", *cli,
                          "--out", str(tmp_path / "two"), "--checkpoint-dir", str(tmp_path / "ckpt"), *ARGS],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = TunedLens.load(tmp_path / "one", model), TunedLens.load(tmp_path / "two", model)
    assert float(a.weight.detach().abs().sum()) > 0  # it trained
    # the same lens up to float summation order (statistics and gradients are all-reduced sums)
    torch.testing.assert_close(b.weight, a.weight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.bias, a.bias, atol=1e-5, rtol=1e-4)
    assert (tmp_path / "ckpt" / "state.json").is_file()  # rank 0 wrote the checkpoints
    resumed = train_tuned_lens(model, [text], checkpoint_dir=tmp_path / "ckpt", resume=True, progress=False,
                               steps=3, tokens_per_step=64, seq_len=16, init_tokens=96, lr=0.01)
    torch.testing.assert_close(resumed.weight, a.weight, atol=1e-5, rtol=1e-4)  # resumes in one process


SETTINGS = dict(steps=3, tokens_per_step=4 * 16, seq_len=16, init_tokens=6 * 16, lr=1e-2, progress=False)


def test_uneven_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot be split evenly over 3 processes"):
        train_tuned_lens(_model(), [str(_corpus(tmp_path))], data_parallel=DataParallel(0, 3), **SETTINGS)


def test_data_parallel_arithmetic() -> None:
    dp = [DataParallel(r, 3) for r in range(3)]
    assert [d.split(10) for d in dp] == [(0, 4), (4, 7), (7, 10)]
    assert [[i for i in range(7) if d.owns(i)] for d in dp] == [[0, 3, 6], [1, 4], [2, 5]]
    assert list(dp[1].shard(list("abcdefghij"))) == list("efg")
    single = DataParallel.from_env()
    assert not single.enabled and single.is_main
    single.all_reduce_sum_(torch.ones(2))  # a no-op with one process
    assert isinstance(TunedLens, type)
