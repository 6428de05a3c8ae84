"""The attention function of the hooks backend: the sites that exist only inside attention.

``rot_q``, ``rot_k``, ``attn_scores`` and ``attn_pattern`` need the attention function itself; scores and
probabilities need an eager attention, which SDPA never is. While any session wants one of them
(:func:`acquire` / :func:`release`, counted per config) the model's config points at
:data:`PATTERN_ATTENTION`, registered with transformers as :func:`eager_with_pattern_hook` (and a mask
function). That function runs the hooks registered for its attention module (:func:`add_hook`), then the
eager attention for contexts that want scores or probabilities and the model's original implementation for
every other forward, so other threads' forwards are unchanged. Each hook checks that its own session is open
in the calling context (see :mod:`lmscope.interventions.backends.session`).

Models whose attention is computed inline (no attention function to swap) have an adapter port
(``model.attention_port``); while hooks are registered on such a module, its ``forward`` runs the port,
which calls :func:`eager_with_pattern_hook`.
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import Any, Callable

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..local import base_config
from .session import active_sessions

#: An attention hook: (value, number of this forward's query tokens) -> value.
AttentionHook = Callable[[torch.Tensor, int], torch.Tensor]

PATTERN_ATTENTION = "lmscope_eager"
#: attention module -> site kind (rot_q, rot_k, attn_scores, attn_pattern) -> hooks, outer sessions first
_PATTERN_HOOKS: dict[nn.Module, dict[str, list[AttentionHook]]] = {}
_PATTERN_LOCK = threading.Lock()
#: id(config) -> [config, number of open sessions using our attention function, original attention implementation]
_PATTERN_USERS: dict[int, list[Any]] = {}


def _wants_pattern(config: Any) -> bool:
    """Whether a session open in the current context needs the eager attention (``attn_scores``/``attn_pattern``)
    on this config's model."""
    config = base_config(config)  # a partial forward's config copy stands for the model's own
    return any(s.wants_pattern and s.model.hf_model.config is config for s in active_sessions())


def _original_impl(config: Any) -> str | None:
    config = base_config(config)
    entry = _PATTERN_USERS.get(id(config))
    impl = entry[2] if entry is not None else getattr(config, "_attn_implementation_internal", None)
    return None if impl == PATTERN_ATTENTION else impl


def _original_attention(module: nn.Module, config: Any) -> Callable[..., tuple[torch.Tensor, Any]] | None:
    """The attention function the model would use without lmscope (None: its own eager function)."""
    impl = _original_impl(config)
    if impl not in (None, "eager") and impl in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[impl]
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def _pattern_mask(*args: Any, config: Any = None, **kwargs: Any) -> Any:
    """Eager (additive) mask for contexts that want patterns; the original implementation's mask otherwise."""
    impl = _original_impl(config) if config is not None and not _wants_pattern(config) else None
    fn = ALL_MASK_ATTENTION_FUNCTIONS[impl] if impl is not None and impl in ALL_MASK_ATTENTION_FUNCTIONS else \
        eager_mask
    return fn(*args, config=config, **kwargs)


def _run_hooks(hooks: dict[str, list[AttentionHook]], kind: str, value: torch.Tensor, q_len: int) -> torch.Tensor:
    for hook in tuple(hooks.get(kind, ())):  # each hook checks that its own session is open here
        value = hook(value, q_len)
    return value


def eager_with_pattern_hook(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None,
                            dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention function while a session reads or writes a site inside attention.

    ``rot_q``/``rot_k`` hooks see the query and key as they arrive (after q/k norms and rotary, before any
    grouped-query repetition); a context that wants no scores or pattern then runs the model's own attention
    function on them. Otherwise an eager attention exposes the pre-softmax scores (scale, soft-cap and mask
    included) to ``attn_scores`` hooks and the probabilities to ``attn_pattern`` hooks (read and write).
    """
    hooks = _PATTERN_HOOKS.get(module, {})
    q_len = query.shape[2]
    query = _run_hooks(hooks, "rot_q", query, q_len)
    key = _run_hooks(hooks, "rot_k", key, q_len)
    config = getattr(module, "config", None)
    if config is not None and not _wants_pattern(config):
        original = _original_attention(module, config)
        if original is not None:
            return original(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    b, n_heads, _, d_head = query.shape
    n_kv = key.shape[1]
    n_rep = n_heads // n_kv
    # grouped-query attention: query head i reads key/value head i // n_rep. The n_rep query heads of a group
    # are stacked along the query axis, so key/value are never copied n_rep times (on a long cache that copy
    # costs more than the products themselves)
    grouped = query.reshape(b, n_kv, n_rep * q_len, d_head)
    weights = torch.matmul(grouped, key.transpose(2, 3)).view(b, n_heads, q_len, -1) * scaling
    softcap = kwargs.get("softcap")
    if softcap:
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, : key.shape[-2]]
    weights = _run_hooks(hooks, "attn_scores", weights, q_len)
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = _run_hooks(hooks, "attn_pattern", weights, q_len)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights.reshape(b, n_kv, n_rep * q_len, -1), value).view(b, n_heads, q_len, -1)
    return out.transpose(1, 2).contiguous(), weights


AttentionInterface.register(PATTERN_ATTENTION, eager_with_pattern_hook)
AttentionMaskInterface.register(PATTERN_ATTENTION, _pattern_mask)


class AttentionHookHandle:
    """Removes one hook registered by :func:`add_hook` (and the module's port once it has no hook left)."""

    def __init__(self, attn: nn.Module, kind: str, hook: AttentionHook) -> None:
        self.attn, self.kind, self.hook = attn, kind, hook

    def remove(self) -> None:
        with _PATTERN_LOCK:
            per_kind = _PATTERN_HOOKS.get(self.attn, {})
            rest = [h for h in per_kind.get(self.kind, ()) if h is not self.hook]
            if rest:
                per_kind[self.kind] = rest
            else:
                per_kind.pop(self.kind, None)
            if not per_kind:
                _PATTERN_HOOKS.pop(self.attn, None)
                self.attn.__dict__.pop("forward", None)


def add_hook(attn: nn.Module, kind: str, hook: AttentionHook,
             port: Callable[..., Any] | None = None) -> AttentionHookHandle:
    """Run ``hook`` at ``kind`` inside ``attn``'s attention function (after the hooks already there) until the
    handle is removed; ``port`` is the adapter's attention port for models that compute attention inline."""
    with _PATTERN_LOCK:
        per_kind = _PATTERN_HOOKS.setdefault(attn, {})
        per_kind[kind] = [*per_kind.get(kind, ()), hook]
    if port is not None:  # attention computed inline: run the adapter's port, which calls ours
        attn.forward = functools.partial(port, attn, eager_with_pattern_hook)
    return AttentionHookHandle(attn, kind, hook)


def acquire(config: Any) -> None:
    """Point the config at the pattern-exposing attention while at least one session wants patterns."""
    with _PATTERN_LOCK:
        entry = _PATTERN_USERS.get(id(config))
        if entry is None:
            _PATTERN_USERS[id(config)] = [config, 1, getattr(config, "_attn_implementation_internal", None)]
            config._attn_implementation_internal = PATTERN_ATTENTION
        else:
            entry[1] += 1


def release(config: Any) -> None:
    """Undo one :func:`acquire`; the last one restores the config's own attention implementation."""
    with _PATTERN_LOCK:
        entry = _PATTERN_USERS[id(config)]
        entry[1] -= 1
        if entry[1] == 0:
            config._attn_implementation_internal = entry[2]
            del _PATTERN_USERS[id(config)]


def idle() -> bool:
    """Whether no config points at our attention function and no attention hook is registered."""
    return not _PATTERN_USERS and not _PATTERN_HOOKS
