"""On-disk activation datasets: sharded == in memory, resume == uninterrupted, fingerprint and input checks."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from tiny_models import build_tiny

from lmscope.interventions import ActivationDataset, Cache, HookedModel, ModelMismatchError, write_dataset
from lmscope.interventions.errors import InputError, SiteError
from lmscope.interventions.tolerance import assert_close

PROMPTS = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12], [3, 3], [20, 21, 22], [4, 5, 6, 7, 8, 9], [11, 12, 13]]
LABELS = [0, 1, 0, 1, 0, 1, 1]
SITES = ["resid_post.0", "head_z.1", "mlp_out.2"]


def _by_hand(model: HookedModel, positions) -> tuple[dict[str, np.ndarray], list[int], list[int]]:
    """One unbatched forward per prompt, rows picked by hand."""
    rows: dict[str, list[torch.Tensor]] = {s: [] for s in SITES}
    p_idx, t_idx = [], []
    for i, p in enumerate(PROMPTS):
        cache = model.run([p], [Cache(SITES)]).cache
        n = len(p)
        if positions == "all":
            keep = list(range(n))
        elif positions == "last":
            keep = [n - 1]
        elif isinstance(positions, slice):
            keep = list(range(n))[positions]
        elif isinstance(positions, list):
            keep = [positions[i] % n]
        else:
            keep = [positions % n]
        for s in SITES:
            rows[s] += [cache[s][0, t].reshape(-1) for t in keep]
        p_idx += [i] * len(keep)
        t_idx += keep
    return {s: torch.stack(v).cpu().numpy() for s, v in rows.items()}, p_idx, t_idx


def _check_sharded(model: HookedModel, path: Path, positions) -> None:
    ds = write_dataset(model, path, PROMPTS, SITES, LABELS, positions, batch_size=3, shard_rows=4)
    assert ds.complete and len(ds.shards) > 1
    want, p_idx, t_idx = _by_hand(model, positions)
    for site in SITES:
        np.testing.assert_allclose(ds.array(site), want[site], rtol=1e-5, atol=1e-5)
    assert ds.prompt_index().tolist() == p_idx and ds.token_index().tolist() == t_idx
    assert ds.labels() == [LABELS[i] for i in p_idx]
    assert ds.token_ids().tolist() == [PROMPTS[i][t] for i, t in zip(p_idx, t_idx)]
    assert torch.cat(list(ds.iter_site(SITES[0]))).shape[0] == ds.n_rows


@pytest.mark.parametrize("positions", ["last", 0, slice(1, 3), [0, -1, 2, 1, 0, -2, 1]])
def test_sharded_equals_in_memory(llama_tiny: HookedModel, tmp_path: Path, positions) -> None:
    _check_sharded(llama_tiny, tmp_path, positions)


def test_sharded_equals_in_memory_every_architecture(tiny: HookedModel, tmp_path: Path) -> None:
    _check_sharded(tiny, tmp_path, "all")


def test_storage_dtype_and_reopen(llama_tiny: HookedModel, tmp_path: Path) -> None:
    write_dataset(llama_tiny, tmp_path, PROMPTS, ["resid_post.*"], dtype="bfloat16", shard_rows=2)
    full = write_dataset(llama_tiny, tmp_path / "f32", PROMPTS, ["resid_post.*"])
    again = ActivationDataset.open(tmp_path, llama_tiny)
    assert again.sites == ["resid_post.0", "resid_post.1", "resid_post.2"] and again.dtype == "bfloat16"
    assert next(again.iter_site("resid_post.1")).dtype == torch.bfloat16
    # storing is one rounding of the float32 values to bfloat16 (the same forward fills both datasets)
    assert_close(torch.from_numpy(again.array("resid_post.1")), torch.from_numpy(full.array("resid_post.1")),
                 torch.bfloat16, n_ops=1)


def test_interrupted_then_resumed_equals_uninterrupted(llama_tiny: HookedModel, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    whole = write_dataset(llama_tiny, tmp_path / "a", PROMPTS, SITES, LABELS, "all", batch_size=2, shard_rows=3)
    calls = {"n": 0}
    real_run = llama_tiny.run

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_run(*args, **kwargs)

    monkeypatch.setattr(llama_tiny, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(llama_tiny, tmp_path / "b", PROMPTS, SITES, LABELS, "all", batch_size=2, shard_rows=3)
    partial = ActivationDataset.open(tmp_path / "b")
    assert not partial.complete and len(partial.shards) == 2
    with pytest.raises(InputError, match="incomplete"):
        partial.array(SITES[0])
    monkeypatch.setattr(llama_tiny, "run", real_run)
    resumed = write_dataset(llama_tiny, tmp_path / "b", PROMPTS, SITES, LABELS, "all", batch_size=2, shard_rows=3)
    assert resumed.complete and resumed.n_rows == whole.n_rows
    for site in SITES:
        np.testing.assert_array_equal(resumed.array(site), whole.array(site))
    assert resumed.prompt_index().tolist() == whole.prompt_index().tolist()
    # a finished dataset resumes to a no-op: nothing is collected twice
    monkeypatch.setattr(llama_tiny, "run", flaky)
    calls["n"] = -100
    again = write_dataset(llama_tiny, tmp_path / "b", PROMPTS, SITES, LABELS, "all", batch_size=2, shard_rows=3)
    assert calls["n"] == -100 and again.n_rows == whole.n_rows


def test_two_writers_fill_one_dataset(llama_tiny: HookedModel, tmp_path: Path) -> None:
    whole = write_dataset(llama_tiny, tmp_path / "a", PROMPTS, SITES, LABELS, batch_size=2)
    write_dataset(llama_tiny, tmp_path / "b", PROMPTS, SITES, LABELS, writer="w1", prompt_range=(4, 7))
    half = ActivationDataset.open(tmp_path / "b")
    assert not half.complete
    with pytest.raises(InputError, match="overlap"):
        write_dataset(llama_tiny, tmp_path / "b", PROMPTS, SITES, LABELS, writer="w0", prompt_range=(0, 5))
    both = write_dataset(llama_tiny, tmp_path / "b", PROMPTS, SITES, LABELS, writer="w0", prompt_range=(0, 4))
    assert both.complete and {s["writer"] for s in both.shards} == {"w0", "w1"}
    np.testing.assert_allclose(both.array("head_z.1"), whole.array("head_z.1"), rtol=1e-5, atol=1e-6)


def test_index_refuses_another_model(tmp_path: Path) -> None:
    a, b = HookedModel(build_tiny("llama", seed=0)), HookedModel(build_tiny("llama", seed=1))
    write_dataset(a, tmp_path, PROMPTS, SITES, LABELS)
    with pytest.raises(ModelMismatchError, match="different weights"):
        ActivationDataset.open(tmp_path, b)
    with pytest.raises(ModelMismatchError):
        write_dataset(b, tmp_path, PROMPTS, SITES, LABELS)
    with pytest.raises(ModelMismatchError, match="n_layers|architecture"):
        write_dataset(HookedModel(build_tiny("gpt2")), tmp_path, PROMPTS, SITES, LABELS)


def test_resume_with_other_arguments_is_refused(llama_tiny: HookedModel, tmp_path: Path) -> None:
    write_dataset(llama_tiny, tmp_path, PROMPTS, SITES, LABELS)
    with pytest.raises(InputError, match="'labels'"):
        write_dataset(llama_tiny, tmp_path, PROMPTS, SITES, [1 - x for x in LABELS])
    with pytest.raises(InputError, match="'sites'"):
        write_dataset(llama_tiny, tmp_path, PROMPTS, ["resid_post.1"], LABELS)
    with pytest.raises(InputError, match="'prompts_sha256'"):
        write_dataset(llama_tiny, tmp_path, PROMPTS[::-1], SITES, LABELS)


def test_bad_input_errors(llama_tiny: HookedModel, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="7 prompts"):
        write_dataset(llama_tiny, tmp_path / "x", PROMPTS, SITES, LABELS[:-1])
    with pytest.raises(SiteError):
        write_dataset(llama_tiny, tmp_path / "x", PROMPTS, ["resid_post.9"], LABELS)
    with pytest.raises(SiteError):
        write_dataset(llama_tiny, tmp_path / "x", PROMPTS, ["resid_postt.0"], LABELS)
    with pytest.raises(InputError, match="outside prompt 3"):
        write_dataset(llama_tiny, tmp_path / "y", PROMPTS, SITES, LABELS, positions=2)
    assert not (tmp_path / "y").exists() or not ActivationDataset.open(tmp_path / "y").shards  # nothing written
    with pytest.raises(InputError, match="selects no token"):
        write_dataset(llama_tiny, tmp_path / "z", PROMPTS, SITES, LABELS, positions=slice(5, 9))
    with pytest.raises(InputError, match="Unknown positions"):
        write_dataset(llama_tiny, tmp_path / "z", PROMPTS, SITES, LABELS, positions="first")
    with pytest.raises(InputError, match="entries"):
        write_dataset(llama_tiny, tmp_path / "z", PROMPTS, SITES, LABELS, positions=[0, 1])
    with pytest.raises(InputError, match="dtype"):
        write_dataset(llama_tiny, tmp_path / "z", PROMPTS, SITES, LABELS, dtype="int8")
    ds = write_dataset(llama_tiny, tmp_path / "ok", PROMPTS, SITES)
    with pytest.raises(InputError, match="not in this dataset"):
        ds.array("resid_post.2")
    with pytest.raises(InputError, match="without labels"):
        ds.labels()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="not an lmscope activation dataset"):
        ActivationDataset.open(tmp_path / "junk")


WORKER = Path(__file__).with_name("dp_collect_worker.py")


def _worker_module() -> ModuleType:
    """The torchrun worker script as a module (its prompts and sites), loaded from its file path."""
    spec = importlib.util.spec_from_file_location("dp_collect_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torchrun(tmp_path: Path, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    # the worker imports tiny_models from tests/, as the test process does (conftest puts tests/ on its path)
    path = os.pathsep.join(p for p in (str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([torchrun, "--nproc_per_node=2", f"--master_port={port}", str(WORKER), str(out)],
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **env}, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_data_parallel_collection_equals_one_process_and_resumes(tmp_path: Path) -> None:
    """torchrun, 2 gloo processes: one merged index equal to the one-process dataset; an interrupted rank resumes."""
    w = _worker_module()
    model = HookedModel(build_tiny("llama").cpu())
    one = write_dataset(model, tmp_path / "one", w.PROMPTS, w.SITES, list(range(len(w.PROMPTS))), "all",
                        batch_size=2, shard_rows=4)
    done = _torchrun(tmp_path, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    two = ActivationDataset.open(tmp_path / "two", model)
    assert two.complete and {s["writer"] for s in two.shards} == {"rank0", "rank1"}
    for site in w.SITES:
        np.testing.assert_allclose(two.array(site), one.array(site), rtol=1e-5, atol=1e-6)
    assert two.prompt_index().tolist() == one.prompt_index().tolist()

    broken = _torchrun(tmp_path, tmp_path / "three", LMSCOPE_TEST_FAIL_RANK="1")
    assert broken.returncode != 0
    assert not ActivationDataset.open(tmp_path / "three").complete
    again = _torchrun(tmp_path, tmp_path / "three")
    assert again.returncode == 0, again.stderr[-3000:]
    three = ActivationDataset.open(tmp_path / "three", model)
    assert three.complete and three.n_rows == one.n_rows  # no duplicates, no gaps
    np.testing.assert_allclose(three.array("head_z.1"), one.array("head_z.1"), rtol=1e-5, atol=1e-6)


def test_data_parallel_needs_enough_prompts(llama_tiny: HookedModel, tmp_path: Path) -> None:
    from lmscope.interventions.distributed import DataParallel

    with pytest.raises(InputError, match="2 prompts cannot be shared by 3 processes"):
        write_dataset(llama_tiny, tmp_path, PROMPTS[:2], SITES, data_parallel=DataParallel(0, 3))
