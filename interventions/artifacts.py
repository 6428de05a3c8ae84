"""Atomic, pickle-free artifact files: a folder with one JSON config and one safetensors file.

Used by interventions, lenses and steering vectors alike. Tensors always load
on the CPU whatever device saved them; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from .errors import ArtifactError, InputError

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
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` in one rename.

    If the body raises, ``path`` is left exactly as it was and the temporary folder is removed.
    """
    final = Path(path)
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
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(cpu, str(tmp / tensors_name))
    return Path(path)


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
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ValueError...
        raise ArtifactError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); it is "
                            "truncated or corrupted: save the artifact again.") from None


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
