"""Damaged files and full disks are lmscope errors naming the file and what happened, never safetensors' raw
``SafetensorError``; a failed write leaves nothing behind (and an earlier artifact at that path intact)."""

from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch
from tiny_models import build_tiny

from lmscope.interventions import HookedModel, Steer, write_dataset
from lmscope.interventions.artifacts import load_tensors, open_tensors, save_artifact, save_tensors
from lmscope.interventions.errors import ArtifactError, ArtifactWriteError
from lmscope.lens.lenses import TENSORS_NAME, TunedLens

#: What safetensors' Rust writer raises on a full disk (a SafetensorError wrapping the OS error, not an OSError).
RUST_ENOSPC = 'Error while serializing: I/O error: No space left on device (os error 28)'
FULL_DISKS = {"safetensors": lambda: safetensors.SafetensorError(RUST_ENOSPC),
              "oserror": lambda: OSError(errno.ENOSPC, "No space left on device")}


def _full_disk(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Make safetensors' file writer fail the way it does on a full disk (after writing half a file)."""
    def full(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        Path(filename).write_bytes(b"half a file")
        raise FULL_DISKS[kind]()
    monkeypatch.setattr(safetensors.torch, "save_file", full)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("kind", sorted(FULL_DISKS))
def test_saving_a_lens_onto_a_full_disk(llama_tiny: HookedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        kind: str) -> None:
    lens = TunedLens(llama_tiny)
    lens.save(tmp_path / "old")
    before = (tmp_path / "old" / TENSORS_NAME).read_bytes()
    _full_disk(monkeypatch, kind)
    with pytest.raises(ArtifactWriteError, match=re.escape(str(tmp_path / "new" / TENSORS_NAME))
                       + r": the disk is full \(No space left on device\)\. Nothing was written"):
        lens.save(tmp_path / "new")
    with pytest.raises(ArtifactWriteError, match="the disk is full"):
        lens.save(tmp_path / "old")  # replacing an earlier lens: it stays as it was
    assert _leftovers(tmp_path) == ["old"]  # no temporary folder, no half lens
    assert (tmp_path / "old" / TENSORS_NAME).read_bytes() == before
    with pytest.raises(ArtifactWriteError, match="the disk is full"):
        Steer("resid_post.0", torch.ones(llama_tiny.d_model)).save(tmp_path / "steer")
    with pytest.raises(ArtifactWriteError, match="the disk is full"):
        save_tensors({"t": torch.ones(3)}, tmp_path / "t.safetensors")
    assert _leftovers(tmp_path) == ["old"]


def test_other_write_failures_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise safetensors.SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)")
    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(ArtifactWriteError, match=r"Cannot write .*a[/\\]tensors\.safetensors \(SafetensorError: "
                                                 r".*Permission denied"):
        save_artifact(tmp_path / "a", {}, {"t": torch.ones(2)})
    assert _leftovers(tmp_path) == []


def test_dataset_shard_onto_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = HookedModel(build_tiny("llama"))
    real = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        if ".shard-" in self.name:  # the temporary file of a shard
            real(self, data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    with pytest.raises(ArtifactWriteError, match=r"shard-w0-00000\.safetensors: the disk is full"):
        write_dataset(model, tmp_path / "ds", [[1, 2, 3], [4, 5]], ["resid_post.0"])
    assert not [p for p in (tmp_path / "ds").iterdir() if "shard" in p.name]  # no half shard


def test_corrupted_dataset_shard_names_the_file(tmp_path: Path) -> None:
    model = HookedModel(build_tiny("llama"))
    ds = write_dataset(model, tmp_path / "ds", [[1, 2, 3], [4, 5], [6, 7, 8]], ["resid_post.0"], batch_size=1,
                       shard_rows=1)
    shard = tmp_path / "ds" / ds.shards[1]["file"]
    data = shard.read_bytes()
    for damaged in (b"garbage" * 20, data[:6], data[: len(data) // 2]):
        shard.write_bytes(damaged)
        for read in (lambda: ds.array("resid_post.0"), lambda: list(ds.iter_site("resid_post.0")), ds.token_ids):
            with pytest.raises(ArtifactError, match=re.escape(str(shard)) + r" is not a readable safetensors "
                                                    r"file: it is corrupted or truncated \("):
                read()
    shard.unlink()
    with pytest.raises(ArtifactError, match=re.escape(str(shard)) + " is missing"):
        ds.array("resid_post.0")


def test_reader_names_a_missing_tensor(tmp_path: Path) -> None:
    save_tensors({"a": torch.ones(2)}, tmp_path / "t.safetensors")
    assert torch.equal(load_tensors(tmp_path / "t.safetensors")["a"], torch.ones(2))
    with open_tensors(tmp_path / "t.safetensors") as f:
        assert f.keys() == ["a"] and torch.equal(f.get_tensor("a"), torch.ones(2))
        with pytest.raises(ArtifactError, match=r"t\.safetensors has no tensor 'b' \(it holds \['a'\]\)"):
            f.get_tensor("b")
