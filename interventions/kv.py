"""Key/value caches: the one place that knows how transformers names, returns and builds them.

- :func:`cache_kwarg`: the forward's keyword for a cache (``cache`` in transformers >= 5.2x,
  ``past_key_values`` before);
- :func:`output_cache`: the cache a forward returned (under either name, attribute or key);
- :func:`build_cache`: a fresh ``DynamicCache`` from per-layer ``(keys, values)`` tensors.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:
    from transformers import DynamicCache

    from .model import HookedModel


def cache_kwarg(model: HookedModel) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier releases)."""
    return "cache" if "cache" in inspect.signature(model.hf_model.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache in a model output (``out.cache`` or ``out.past_key_values``; None without one)."""
    for name in ("cache", "past_key_values"):
        value = out.get(name) if isinstance(out, dict) else getattr(out, name, None)
        if value is not None:
            return value
    return None


def build_cache(model: HookedModel, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A ``DynamicCache`` holding ``layers[i] = (keys, values)`` (``[batch, kv_heads, pos, d_head]``) for
    layer ``i``; the tensors are used as given (no copy)."""
    from transformers import DynamicCache

    config: Any = model.hf_model.config
    return DynamicCache(ddp_cache_data=list(layers), config=config)
