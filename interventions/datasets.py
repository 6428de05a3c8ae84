"""Activation datasets on disk: sharded safetensors + one JSON index, written in bounded memory, resumable.

A dataset folder holds ``index.json`` and shards ``shard-<writer>-<k>.safetensors``. Each shard covers a
contiguous range of prompts and stores, for every site, the kept token rows ``[rows, d]`` plus
``prompt_index``, ``token_index`` and ``token_id`` per row. The index records the model fingerprint, the
sites, the positions spec, the labels (one per prompt), the storage dtype, a hash of the prompts and the
list of finished shards with their prompt ranges.

Writing keeps at most one shard's rows (plus one batch) in memory. A shard file is written atomically and
only then listed in the index (also atomically, under a lock file), so an interrupted run resumes from the
first prompt no listed shard covers: no duplicates, no gaps (an unlisted shard file is simply rewritten).
Each writer owns its shards (``writer=`` and ``prompt_range=``), so several processes can fill one dataset
side by side. Reading goes through ``safetensors.safe_open`` (memory-mapped, via ``artifacts.open_tensors``, so a
damaged shard is an ``ArtifactError`` naming it): a dataset never has to fit in RAM, only the site being read.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from .artifacts import atomic_write_bytes, atomic_write_text, open_tensors, tensor_bytes
from .base import decode_positions, encode_positions
from .collect import TokenRows, collect_rows, rows_of
from .distributed import DataParallel
from .errors import InputError
from .fingerprint import check_fingerprint
from .progress import bar_disable
from .specs import as_prompt_list

if TYPE_CHECKING:
    from .model import HookedModel

FORMAT = "lmscope.activation_dataset"
VERSION = 1
INDEX = "index.json"
DTYPES = ("float32", "float16", "bfloat16")
#: Index fields that must agree between writers of one dataset (and on resume).
HEADER_KEYS = ("format", "version", "sites", "positions", "dtype", "n_prompts", "labels", "prompts_sha256")


def _prompts_hash(prompts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()


def _check_positions(positions: TokenRows, n: int) -> TokenRows:
    if isinstance(positions, (list, tuple)):
        if len(positions) != n:
            raise InputError(f"Per-prompt positions has {len(positions)} entries but there are {n} prompts.")
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in positions):
            raise InputError("Per-prompt positions must be one int per prompt.")
        return list(positions)
    if isinstance(positions, str) and positions not in ("last", "all"):
        raise InputError(f"Unknown positions {positions!r}: use 'last', 'all', an int, a slice or one int per prompt.")
    return positions


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / "index.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_index(folder: Path) -> dict[str, Any] | None:
    path = folder / INDEX
    return json.loads(path.read_text()) if path.is_file() else None


def write_dataset(model: HookedModel, path: str | os.PathLike[str], prompts: Sequence[Any], sites: Sequence[str],
                  labels: Sequence[Any] | None = None, positions: TokenRows = "last", *, dtype: str = "float32",
                  batch_size: int = 16, shard_rows: int = 4096, writer: str = "w0",
                  prompt_range: tuple[int, int] | None = None, progress: bool | None = None,
                  data_parallel: DataParallel | None = None) -> ActivationDataset:
    """Collect ``sites`` of ``prompts`` into the dataset folder ``path`` (created or resumed) and open it.

    ``positions``: ``"last"`` (default), ``"all"`` real tokens, an int, a ``slice`` (a token span) or a list
    of one int per prompt. ``labels``: one JSON value per prompt (or None). ``shard_rows`` bounds the rows
    held in memory before a shard is written (a shard always ends on a prompt boundary). ``writer`` and
    ``prompt_range`` (``[start, stop)``) let several writers fill one dataset, each owning its shards.
    Calling again after an interruption continues where the index says this writer stopped.

    ``data_parallel`` (e.g. ``DataParallel.from_env()`` under ``torchrun``): each process writes its contiguous
    share of the prompts as writer ``rank<r>`` into the one shared index, then waits for the others, so every
    process returns the complete dataset.
    """
    if data_parallel is not None and data_parallel.enabled:
        if prompt_range is not None:
            raise InputError("Give either data_parallel or prompt_range, not both (data_parallel picks the range).")
        n = len(as_prompt_list(prompts, "prompts"))
        if n < data_parallel.world_size:
            raise InputError(f"{n} prompts cannot be shared by {data_parallel.world_size} processes; use fewer "
                             "processes than prompts.")
        write_dataset(model, path, prompts, sites, labels, positions, dtype=dtype, batch_size=batch_size,
                      shard_rows=shard_rows, writer=f"rank{data_parallel.rank}",
                      prompt_range=data_parallel.split(n, "prompts"), progress=progress)
        data_parallel.barrier()
        return ActivationDataset(Path(path), model)
    items = as_prompt_list(prompts, "prompts")
    n = len(items)
    if labels is not None:
        labels = [lab.item() if hasattr(lab, "item") else lab for lab in labels]
        if len(labels) != n:
            raise InputError(f"There are {len(labels)} labels for {n} prompts; give exactly one label per prompt.")
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    if batch_size < 1 or shard_rows < 1:
        raise InputError("batch_size and shard_rows must be at least 1.")
    if not writer or not writer.replace("-", "").replace("_", "").isalnum():
        raise InputError(f"writer must be a non-empty name of letters, digits, '-' or '_', got {writer!r}.")
    site_names = [s.name for s in model.resolve(list(sites))]
    positions = _check_positions(positions, n)
    start, stop = prompt_range if prompt_range is not None else (0, n)
    if not 0 <= start < stop <= n:
        raise InputError(f"prompt_range {prompt_range} must satisfy 0 <= start < stop <= {n}.")
    header = {"format": FORMAT, "version": VERSION, "sites": site_names, "positions": encode_positions(positions),
              "dtype": dtype, "n_prompts": n, "labels": labels, "prompts_sha256": _prompts_hash(items),
              "widths": {s: int(np.prod(model.site_shape(s))) for s in site_names}}
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    done = _open_or_create(folder, header, model, writer, start, stop)
    _fill(model, folder, items, site_names, positions, getattr(torch, dtype), batch_size, shard_rows, writer,
          max(done, start), stop, progress)
    return ActivationDataset(folder, model)


def _open_or_create(folder: Path, header: dict[str, Any], model: HookedModel, writer: str, start: int,
                    stop: int) -> int:
    """Create the index or check it against this run; return the first prompt this writer still has to do."""
    with _locked(folder):
        index = _read_index(folder)
        if index is None:
            atomic_write_text(folder / INDEX, json.dumps({**header, "fingerprint": model.fingerprint(),
                                                          "shards": []}, indent=1))
            return start
        check_fingerprint(index.get("fingerprint", {}), model, what=f"activation dataset at {folder}")
        for key in HEADER_KEYS:
            if index.get(key) != header[key]:
                raise InputError(f"The dataset at {folder} was written with a different {key!r}; resume with the "
                                 "same prompts, labels, sites, positions and dtype, or use another folder.")
        mine = [s for s in index["shards"] if s["writer"] == writer]
        for s in index["shards"]:
            if s["writer"] != writer and s["prompts"][0] < stop and start < s["prompts"][1]:
                raise InputError(f"Writer {s['writer']!r} already owns prompts {s['prompts']}, which overlap "
                                 f"this writer's range [{start}, {stop}).")
        return max([s["prompts"][1] for s in mine], default=start)


def _fill(model: HookedModel, folder: Path, items: list[Any], sites: list[str], positions: TokenRows,
          dtype: torch.dtype, batch_size: int, shard_rows: int, writer: str, start: int, stop: int,
          progress: bool | None) -> None:
    from tqdm.auto import tqdm

    lengths = _lengths(model, items[start:stop], batch_size)
    rows = [rows_of(positions[start + i] if isinstance(positions, list) else positions, n, start + i)
            for i, n in enumerate(lengths)]  # every position checked before anything is written
    buf: list[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]] = []
    held, first = 0, start
    show = (stop - start) > 4 * batch_size if progress is None else progress
    for b in tqdm(range(start, stop, batch_size), desc="dataset", disable=bar_disable(show), leave=False):
        e = min(b + batch_size, stop)
        chunk = rows[b - start:e - start]
        values, token_ids = collect_rows(model, items[b:e], sites, chunk, dtype)
        p_idx = torch.tensor([b + i for i, r in enumerate(chunk) for _ in r], dtype=torch.int64)
        t_idx = torch.tensor([t for r in chunk for t in r], dtype=torch.int64)
        buf.append((values, p_idx, t_idx, token_ids))
        held += len(p_idx)
        if held >= shard_rows or e == stop:
            _write_shard(folder, writer, sites, buf, first, e)
            buf, held, first = [], 0, e


def _lengths(model: HookedModel, items: list[Any], batch_size: int) -> list[int]:
    out: list[int] = []
    for b in range(0, len(items), 256):
        out += model.tokenize(items[b:b + 256]).lengths.tolist()
    return out


def _write_shard(folder: Path, writer: str, sites: list[str], buf: list[Any], first: int, stop: int) -> None:
    tensors = {s: torch.cat([v[s] for v, *_ in buf]).contiguous() for s in sites}
    tensors["prompt_index"] = torch.cat([b[1] for b in buf])
    tensors["token_index"] = torch.cat([b[2] for b in buf])
    tensors["token_id"] = torch.cat([b[3] for b in buf]).to(torch.int64)
    with _locked(folder):
        index = _read_index(folder)
        assert index is not None
        k = sum(1 for s in index["shards"] if s["writer"] == writer)
        name = f"shard-{writer}-{k:05d}.safetensors"
        atomic_write_bytes(folder / name, tensor_bytes(tensors))
        index["shards"].append({"file": name, "writer": writer, "prompts": [first, stop],
                                "rows": int(tensors["prompt_index"].shape[0])})
        atomic_write_text(folder / INDEX, json.dumps(index, indent=1))


@dataclass
class ActivationDataset:
    """A dataset folder, read lazily. ``model`` (optional) is checked against the index's fingerprint."""

    path: Path
    model: Any = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        index = _read_index(self.path)
        if index is None or index.get("format") != FORMAT:
            raise InputError(f"{self.path} is not an lmscope activation dataset ({INDEX} missing or of another "
                             "format).")
        if self.model is not None:
            check_fingerprint(index["fingerprint"], self.model, what=f"activation dataset at {self.path}")
        self.index = index
        self.shards = sorted(index["shards"], key=lambda s: s["prompts"][0])

    @classmethod
    def open(cls, path: str | os.PathLike[str], model: HookedModel | None = None) -> ActivationDataset:
        return cls(Path(path), model)

    sites = property(lambda self: list(self.index["sites"]))
    dtype = property(lambda self: self.index["dtype"])
    n_prompts = property(lambda self: int(self.index["n_prompts"]))
    n_rows = property(lambda self: sum(s["rows"] for s in self.shards))
    positions = property(lambda self: decode_positions(self.index["positions"]))
    fingerprint = property(lambda self: self.index["fingerprint"])

    @property
    def complete(self) -> bool:
        """True when the shards cover every prompt exactly once."""
        covered = 0
        for s in self.shards:
            if s["prompts"][0] != covered:
                return False
            covered = s["prompts"][1]
        return covered == self.n_prompts

    def require(self, site: str | None = None) -> None:
        """Raise unless the dataset is complete (and holds ``site``, when given)."""
        if not self.complete:
            have = [tuple(s["prompts"]) for s in self.shards]
            raise InputError(f"The dataset at {self.path} is incomplete (prompt ranges {have} of "
                             f"{self.n_prompts}); resume write_dataset with the same arguments first.")
        if site is not None and site not in self.index["sites"]:
            raise InputError(f"Site {site!r} is not in this dataset; it holds {', '.join(self.sites)}.")

    def _column(self, key: str) -> np.ndarray:
        parts = []
        for s in self.shards:
            with open_tensors(self.path / s["file"]) as f:
                parts.append(f.get_tensor(key))
        t = torch.cat(parts)
        return t.float().numpy() if t.is_floating_point() else t.numpy()

    def array(self, site: str) -> np.ndarray:
        """All rows of one site as float32 ``[n_rows, d]`` (only this site is read; shards are mmapped)."""
        self.require(site)
        out = np.empty((self.n_rows, self.index["widths"][site]), dtype=np.float32)
        row = 0
        for s in self.shards:
            with open_tensors(self.path / s["file"]) as f:
                t = f.get_tensor(site)
            out[row:row + t.shape[0]] = t.float().numpy()
            row += t.shape[0]
        return out

    def iter_site(self, site: str) -> Iterator[torch.Tensor]:
        """One shard's rows of ``site`` at a time (stored dtype): streaming reads in bounded memory."""
        self.require(site)
        for s in self.shards:
            with open_tensors(self.path / s["file"]) as f:
                yield f.get_tensor(site)

    def prompt_index(self) -> np.ndarray:
        self.require()
        return self._column("prompt_index")

    def token_index(self) -> np.ndarray:
        self.require()
        return self._column("token_index")

    def token_ids(self) -> np.ndarray:
        self.require()
        return self._column("token_id")

    def labels(self) -> list[Any]:
        """One label per row (each row takes its prompt's label)."""
        labels = self.index.get("labels")
        if labels is None:
            raise InputError(f"The dataset at {self.path} was written without labels.")
        return [labels[i] for i in self.prompt_index().tolist()]

    def __repr__(self) -> str:
        return (f"ActivationDataset({str(self.path)!r}, prompts={self.n_prompts}, rows={self.n_rows}, "
                f"sites={len(self.sites)}, dtype={self.dtype}, complete={self.complete})")
