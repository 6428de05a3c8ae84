"""Exceptions raised by lmscope. Every message says what was wrong and what is allowed."""

from __future__ import annotations


class LmscopeError(Exception):
    """Base class of every error lmscope raises on purpose."""


class SiteError(LmscopeError, KeyError):
    """An unknown site name, a malformed one, or a layer out of range."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class UnsupportedArchitectureError(LmscopeError):
    """The wrapped model's architecture has no adapter."""


class InputError(LmscopeError, ValueError):
    """Bad prompts, token ids, positions, shapes or values."""


class ModelMismatchError(LmscopeError, ValueError):
    """An artifact (lens, steering vector) was made for a different model."""


class OfflineError(LmscopeError, OSError):
    """A Hugging Face hub id was asked for, the hub cannot be reached (or HF_HUB_OFFLINE is set) and the model is
    not in the local cache. An ``OSError``, as transformers' own offline errors are."""


class ArtifactError(InputError):
    """A saved artifact that cannot be read: truncated or corrupted file, wrong dtype, wrong shapes, bad JSON."""


class LibraryVersionError(UnsupportedArchitectureError):
    """An installed library (transformers, torch...) changed an internal lmscope relies on: the message names the
    installed version and the range lmscope is tested with."""


class ArtifactWriteError(ArtifactError):
    """An artifact could not be written (disk full, folder not writable); nothing partial is left behind."""


class CacheFolderError(ArtifactWriteError):
    """The lmscope cache folder (``$LMSCOPE_CACHE``, e.g. a shared read-only one) cannot be written, and something
    new must be cached there; what is already cached still loads."""
