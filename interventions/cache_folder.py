"""The cache folder: where lmscope keeps what it derives once (converted models, default lenses, corpora), and
one clear error when that folder cannot be written.

The folder is ``$LMSCOPE_CACHE``, else ``$XDG_CACHE_HOME/lmscope``, else ``~/.cache/lmscope``. It may be shared and
read-only (a cluster's common cache): everything already in it loads without writing, and anything that must be
written there raises :class:`~lmscope.interventions.errors.CacheFolderError`, one line naming the folder and how
to point ``LMSCOPE_CACHE`` elsewhere, before any slow work (:func:`check_cache_writable`) or at the write
itself (the atomic writers of :mod:`lmscope.interventions.artifacts` turn a refused write into it), never a raw
``PermissionError``. No torch import: the CLI can use it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import CacheFolderError

#: ``OSError`` errno values that mean "this folder may not be written" (not "the disk is full").
NOT_WRITABLE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def cache_dir() -> Path:
    """Root of lmscope's caches (embedded model copies, default lenses, the offline corpus)."""
    env = os.environ.get("LMSCOPE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lmscope"


def is_not_writable(err: BaseException) -> bool:
    """Whether ``err`` says a path may not be written (permission denied, read-only file system)."""
    return isinstance(err, OSError) and err.errno in NOT_WRITABLE_ERRNOS


def in_cache(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies inside the cache folder (or is it)."""
    root = os.path.abspath(cache_dir())
    here = os.path.abspath(path)
    return here == root or here.startswith(root.rstrip(os.sep) + os.sep)


def existing_folder(path: str | os.PathLike[str]) -> Path:
    """The folder a new ``path`` would be created in: its parent, or the nearest ancestor that exists."""
    here = Path(os.path.abspath(path)).parent
    while not here.exists() and here != here.parent:
        here = here.parent
    return here


def writable(folder: str | os.PathLike[str]) -> bool:
    """Whether files can be created in ``folder``: the folder, or the nearest parent that exists, is writable
    (``os.access``: the real user's permissions and a read-only mount both count)."""
    return os.access(existing_folder(Path(folder) / "x"), os.W_OK | os.X_OK)


def cache_folder_error(path: str | os.PathLike[str], err: BaseException | None = None) -> CacheFolderError:
    """The one-line :class:`CacheFolderError` for a write of ``path`` (inside the cache) that is refused."""
    root, folder = cache_dir(), existing_folder(path)
    why = f" ({err.strerror})" if isinstance(err, OSError) and err.strerror else ""
    if folder == Path(os.path.abspath(root)):
        what = f"the lmscope cache folder {root} is not writable{why}"
    elif in_cache(folder):
        what = f"{folder} in the lmscope cache folder {root} is not writable{why}"
    else:
        what = f"the lmscope cache folder {root} cannot be created in {folder}{why}"
    held = "What is already cached there still loads; to" if root.is_dir() else "To"
    return CacheFolderError(
        f"Cannot write {path}: {what}. {held} cache something new, point LMSCOPE_CACHE at a folder you can write "
        "(e.g. export LMSCOPE_CACHE=$HOME/lmscope-cache) and run again.")


def check_cache_writable(path: str | os.PathLike[str]) -> None:
    """Raise :class:`CacheFolderError` if ``path`` (a file or folder to create in the cache) cannot be written;
    called before slow work whose result must be cached (a conversion, a lens fit) so it fails at once."""
    if not writable(Path(path).parent):
        raise cache_folder_error(path)
