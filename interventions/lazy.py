"""Lazy package exports (PEP 562), so that ``import lmscope`` and the CLI start without importing torch.

A package's ``__init__`` declares ``{name: module}`` and installs the two hooks::

    __getattr__, __dir__ = lazy_exports(__name__, {"HookedModel": ".model", ...})

Module names starting with ``.`` are relative to the package. The first access imports the module and
caches the value in the package's namespace, so later lookups cost nothing.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` exporting ``names`` (name -> module) on first use."""

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name], package), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
