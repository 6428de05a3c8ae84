"""Atomic, pickle-free artifact files: a folder with one JSON config and one safetensors file.

Used by interventions, lenses and steering vectors alike. Tensors always load
on the CPU whatever device saved them; nothing is ever unpickled.

Every safetensors file lmscope reads or writes goes through :func:`save_tensors`, :func:`tensor_bytes`,
:func:`load_tensors` or :func:`open_tensors`, so a damaged file or a full disk is an
:class:`~lmscope.interventions.errors.ArtifactError` naming the file and what happened (corrupted or truncated;
disk full), never safetensors' raw ``SafetensorError``. A folder that may not be written is an
:class:`~lmscope.interventions.errors.ArtifactWriteError` too (a :class:`~lmscope.interventions.errors.CacheFolderError`
inside the cache folder, saying how to move it), never a raw ``PermissionError``. Writes are atomic: a failed one
leaves nothing behind, and what they create gets the user's umask.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import safetensors
import safetensors.torch
import torch

from .cache_folder import cache_folder_error, existing_folder, in_cache, is_not_writable
from .errors import ArtifactError, ArtifactWriteError, InputError

#: What a full disk looks like: ``OSError`` errno values, and the text safetensors' Rust writer puts in its
#: ``SafetensorError`` (it does not raise an ``OSError``).
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left", "os error 28", "storagefull", "disk quota exceeded", "os error 122")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (an ``OSError`` or a library error wrapping one) says the disk or quota is full."""
    if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
        return True
    text = str(err).lower()
    return any(t in text for t in _DISK_FULL_TEXT)


def write_error(path: str | os.PathLike[str], err: BaseException) -> ArtifactWriteError:
    """The :class:`ArtifactWriteError` for a failed write of ``path``: disk full, a folder that may not be
    written (a :class:`CacheFolderError` inside the cache folder), or the cause named."""
    if is_not_writable(err):
        if in_cache(path):
            return cache_folder_error(path, err)
        why = err.strerror if isinstance(err, OSError) and err.strerror else "permission denied"
        return ArtifactWriteError(f"Cannot write {path}: {existing_folder(path)} is not writable ({why}). Nothing "
                                  "was written; choose a folder you can write.")
    if is_disk_full(err):
        return ArtifactWriteError(f"Cannot write {path}: the disk is full (No space left on device). Nothing was "
                                  "written; free some space (or save to another disk, e.g. LMSCOPE_CACHE for "
                                  "caches) and try again.")
    return ArtifactWriteError(f"Cannot write {path} ({type(err).__name__}: {err}). Nothing was written.")


def read_error(path: str | os.PathLike[str], err: BaseException) -> ArtifactError:
    """The :class:`ArtifactError` for an unreadable safetensors file: corrupted or truncated, cause named."""
    return ArtifactError(f"{path} is not a readable safetensors file: it is corrupted or truncated "
                         f"({type(err).__name__}: {err}); write it again (save the artifact, or rebuild the "
                         "dataset shard).")


def _failed_write(err: BaseException, final: Path) -> ArtifactWriteError | None:
    """The error to raise when writing ``final`` atomically failed with ``err`` (None: re-raise ``err``): a full
    disk, or a refused write of ``final``'s folder or one of its parents (not of some file the body reads)."""
    if isinstance(err, ArtifactError):
        return None
    if is_disk_full(err):
        return write_error(final, err)
    if not isinstance(err, OSError):
        return None
    names = [os.path.abspath(os.fsdecode(n)) for n in (err.filename, err.filename2) if n is not None]
    parent = os.path.abspath(final.parent)
    if is_not_writable(err) and (not names or any(os.path.commonpath([n, parent]) in (n, parent) for n in names)):
        return write_error(final, err)
    return None


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read from /proc where available; elsewhere set and restored under a lock)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _as_if_created(path: Path, directory: bool) -> None:
    """Give a ``mkstemp``/``mkdtemp`` result (0600 / 0700) the mode a plain ``open``/``mkdir`` would have had,
    so artifacts in a shared folder are as readable as any other file the user writes (0644 / 0755 under 022)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextmanager
def _failures_named(final: Path) -> Iterator[None]:
    """Raise what :func:`_failed_write` makes of a failure while writing ``final``; other errors unchanged."""
    try:
        yield
    except BaseException as err:
        failed = _failed_write(err, final)
        if failed is None:
            raise
        raise failed from None


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` in one rename.

    If the body raises, ``path`` is left exactly as it was and the temporary folder is removed.
    """
    final = Path(path)
    with _failures_named(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            yield tmp
            for sub in [tmp, *tmp.rglob("*")]:  # writers such as safetensors create their files 0600
                _as_if_created(sub, directory=sub.is_dir())
            if final.exists():
                old = final.with_name(f".{final.name}.old-{os.getpid()}")
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success it replaces ``path`` in one rename.

    Readers never see half a file; if the body raises, ``path`` is untouched and the temporary file removed.
    The file gets the mode a plain ``open`` would give it under the user's umask (not ``mkstemp``'s 0600).
    """
    final = Path(path)
    with _failures_named(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            _as_if_created(Path(tmp), directory=False)  # mkstemp (and writers such as safetensors) make files 0600
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file through a temporary file and a rename (readers never see half a file)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


#: Figure formats :func:`atomic_save_figure` writes (matplotlib renders them without a display).
FIGURE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def atomic_save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Render a matplotlib ``Figure`` to ``path`` atomically; the suffix picks the format (``.png``, ``.pdf``, ...).

    The figure is rendered into memory and written with :func:`atomic_write_bytes`, so a reader (or a crash
    mid-render) never leaves half an image; the figure itself is left open for the caller to show or close.
    """
    import io

    final = Path(path)
    fmt = final.suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise InputError(f"Cannot save a figure as {final.name!r}: use one of "
                         f"{', '.join('.' + f for f in FIGURE_FORMATS)}.")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    atomic_write_bytes(final, buf.getvalue())
    return final


def save_artifact(path: str | os.PathLike[str], config: dict[str, Any], tensors: dict[str, torch.Tensor],
                  config_name: str = "config.json", tensors_name: str = "tensors.safetensors") -> Path:
    """Write ``config`` as JSON and ``tensors`` as safetensors into the folder ``path``, atomically."""
    with atomic_dir(path) as tmp:
        (tmp / config_name).write_text(json.dumps(config, indent=2, sort_keys=True))
        save_tensors(tensors, tmp / tensors_name, shown=Path(path) / tensors_name)
    return Path(path)


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str],
                 shown: str | os.PathLike[str] | None = None) -> None:
    """Write ``tensors`` (moved to the CPU) as a safetensors file at ``path`` (inside an atomic folder or file).

    Any failure is an :class:`ArtifactWriteError` naming ``shown`` (the final path the user asked for; default
    ``path``) and saying "disk full" when it is; the half-written file is removed.
    """
    try:
        safetensors.torch.save_file(_cpu(tensors), str(path))
    except Exception as err:  # SafetensorError (disk full included), OSError, ValueError (non-contiguous) ...
        Path(path).unlink(missing_ok=True)
        raise write_error(shown if shown is not None else path, err) from None


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """``tensors`` (moved to the CPU) serialised as safetensors in memory (write them with
    :func:`atomic_write_bytes`)."""
    try:
        return safetensors.torch.save(_cpu(tensors))
    except Exception as err:
        raise ArtifactWriteError(f"Cannot serialise tensors {sorted(tensors)} ({type(err).__name__}: {err}).") \
            from None


def load_artifact(path: str | os.PathLike[str], config_name: str = "config.json",
                  tensors_name: str = "tensors.safetensors") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a folder written by :func:`save_artifact`; tensors land on the CPU."""
    folder = Path(path)
    cfg = folder / config_name
    if not cfg.is_file():
        raise InputError(f"{folder} is not an lmscope artifact: {config_name} is missing.")
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ArtifactError(f"{cfg} is not readable JSON ({type(err).__name__}: {err}); the file is corrupted or "
                            "truncated: save the artifact again.") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{cfg} holds a JSON {type(config).__name__}, not an object; it is not an lmscope "
                            "artifact.")
    tfile = folder / tensors_name
    tensors = load_tensors(tfile) if tfile.is_file() else {}
    return config, tensors


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a safetensors file on the CPU; any failure is an :class:`ArtifactError` naming the file."""
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ValueError...
        raise read_error(path, err) from None


class TensorReader:
    """One open safetensors file (memory-mapped): :meth:`get_tensor` reads one tensor, errors named."""

    def __init__(self, handle: Any, path: Path) -> None:
        self._handle, self.path = handle, path

    def keys(self) -> list[str]:
        return list(self._handle.keys())

    def get_tensor(self, name: str) -> torch.Tensor:
        """The tensor ``name``; ArtifactError if the file does not hold it or its data is damaged."""
        if name not in self._handle.keys():
            raise ArtifactError(f"{self.path} has no tensor {name!r} (it holds {sorted(self._handle.keys())}).")
        try:
            return self._handle.get_tensor(name)
        except Exception as err:
            raise read_error(self.path, err) from None


@contextmanager
def open_tensors(path: str | os.PathLike[str]) -> Iterator[TensorReader]:
    """``safetensors.safe_open`` (PyTorch, memory-mapped) with its failures as :class:`ArtifactError`s naming
    the file: a damaged header or a truncated file says "corrupted or truncated", a missing file says so."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p} is missing: the artifact is incomplete (was it moved or deleted?).")
    try:
        handle = safetensors.safe_open(str(p), framework="pt")
    except Exception as err:
        raise read_error(p, err) from None
    with handle as f:
        yield TensorReader(f, p)


def expect_tensor(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], where: str | os.PathLike[str],
                  floating: bool = True) -> torch.Tensor:
    """``tensors[name]`` if it exists, has ``shape`` and (with ``floating``) a floating dtype; else ArtifactError."""
    t = tensors.get(name)
    if t is None:
        raise ArtifactError(f"{where} has no tensor {name!r} (it holds {sorted(tensors) or 'none'}).")
    if floating and not t.is_floating_point():
        raise ArtifactError(f"{where}: tensor {name!r} has dtype {t.dtype}; a floating-point dtype is required.")
    if tuple(t.shape) != tuple(shape):
        raise ArtifactError(f"{where}: tensor {name!r} has shape {tuple(t.shape)}; expected {tuple(shape)}.")
    return t
