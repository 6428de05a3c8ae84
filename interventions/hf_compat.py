"""The library versions lmscope is tested with, and the transformers internals it relies on, checked at load.

lmscope reaches into a few transformers internals (an attention port, the attention and mask interfaces, the KV
cache constructor). A new transformers release can change one of them; instead of a ``TypeError`` in the middle
of a forward, :func:`check_internals` (run when a :class:`~lmscope.interventions.HookedModel` is built) and the
ports' own signature checks refuse with a :class:`LibraryVersionError` that names the installed version and the
tested range. ``TESTED`` must equal the ranges in ``pyproject.toml`` (a test checks it); ``make test-latest``
runs the suite on the newest releases the registry offers and reports what breaks.
"""

from __future__ import annotations

import functools
import inspect
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Sequence

from .errors import LibraryVersionError

#: The libraries whose internals lmscope touches, with the range the test suite has passed on:
#: the lower bound is tested (``make test`` with ``constraints.txt``), the upper bound is the next minor not tested.
TESTED: dict[str, str] = {
    "torch": ">=2.13,<2.15",
    "transformers": ">=5.24,<5.26",
    "accelerate": ">=1.15,<1.17",
    "nnsight": ">=0.8.1,<0.9",
}


def installed(name: str) -> str:
    """The installed version of distribution ``name`` ("not installed" when absent)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def range_requirement(name: str) -> str:
    """``"transformers>=5.24,<5.26"``: the tested range of ``name`` as a pip requirement."""
    return f"{name}{TESTED[name]}"


def version_hint(name: str = "transformers") -> str:
    """One sentence naming the installed version of ``name`` and the range lmscope is tested with."""
    return (f"installed: {name} {installed(name)}; lmscope is tested with {range_requirement(name)} "
            f"(pip install '{range_requirement(name)}', or report the break)")


def positional_params(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The names of ``fn``'s named parameters, in order (``*args``/``**kwargs`` left out)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds)


def require_params(fn: Callable[..., Any], needed: Sequence[str], what: str) -> None:
    """Refuse (LibraryVersionError) unless ``fn`` accepts every parameter in ``needed`` by name."""
    have = positional_params(fn)
    missing = [p for p in needed if p not in have]
    if missing:
        raise LibraryVersionError(
            f"{what} relies on {getattr(fn, '__qualname__', fn)} accepting {', '.join(needed)}, but this version "
            f"has ({', '.join(have)}): missing {', '.join(missing)}. {version_hint()}.")


@functools.lru_cache(maxsize=1)
def check_internals() -> None:
    """Check, once per process, the transformers internals every model relies on (raises LibraryVersionError)."""
    try:
        from transformers import AttentionInterface, DynamicCache
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError as err:
        raise LibraryVersionError(f"A transformers internal lmscope uses is gone ({err}). {version_hint()}.") from None
    require_params(DynamicCache.__init__, ("ddp_cache_data", "config"), "Partial forwards (KV prefixes)")
    require_params(eager_mask, ("batch_size", "q_length", "kv_length", "attention_mask", "dtype"),
                   "The attn_pattern mask")
    for registry in (AttentionInterface, AttentionMaskInterface):
        if not callable(getattr(registry, "register", None)):
            raise LibraryVersionError(f"transformers.{registry.__name__} has no register(); attn_pattern needs it. "
                                      f"{version_hint()}.")
    del ALL_ATTENTION_FUNCTIONS, ALL_MASK_ATTENTION_FUNCTIONS
