"""The PyTorch-hooks backend: attach interventions to HF modules for one session, always detach.

``attach(model, interventions)`` is a context manager. On entry it resolves
every site, groups interventions per site (list order kept), registers at most
one hook per site plus one pre-hook on the whole model that builds the
:class:`ForwardContext` of each forward. On exit (normal, exception or
KeyboardInterrupt) every handle is removed and the attention implementation
restored. Only sites that were asked for get hooks.

Sessions are context-local. The hooks live on modules shared by every caller, so
each hook first checks that its session is open in the *current* context (a
:class:`contextvars.ContextVar`: per thread, and per asyncio task); forwards run
elsewhere pass through untouched. Two threads with different interventions on one
model therefore get exactly what each would get alone. Python threads start with an
empty context, so a thread started inside a session does not inherit it; an asyncio
task created inside one does (tasks copy the context).

Nested sessions compose: inside an inner session the outer one still applies, and at
a site both use the outer's interventions run first (as if the inner list were
appended to the outer's); leaving the inner session restores the outer alone.

``attn_pattern`` sites need the probabilities, which SDPA never forms: while any
session wants them the model's config points at an eager attention (and mask) of
ours, which, for forwards of contexts that want no patterns, calls the model's
original implementation, so other threads' forwards are unchanged.
"""

from __future__ import annotations

import functools
import sys
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..base import Intervention
from ..cache import session_cache
from ..errors import InputError
from ..positions import ForwardContext
from ..sites import LAYER_SITES, MODEL_SITES, Site

if TYPE_CHECKING:
    from ..model import HookedModel

PATTERN_ATTENTION = "lmscope_eager"
_PATTERN_HOOKS: dict[nn.Module, list[Callable[[torch.Tensor], torch.Tensor]]] = {}
#: The sessions open in the current context (thread / asyncio task), outermost first.
_ACTIVE: ContextVar[tuple[Session, ...]] = ContextVar("lmscope_sessions", default=())
_PATTERN_LOCK = threading.Lock()
#: id(config) -> [config, number of open sessions wanting patterns, original attention implementation]
_PATTERN_USERS: dict[int, list[Any]] = {}


def _wants_pattern(config: Any) -> bool:
    """Whether a session open in the current context reads or writes ``attn_pattern`` on this config's model."""
    return any(s.wants_pattern and s.model.hf_model.config is config for s in _ACTIVE.get())


def _original_impl(config: Any) -> str | None:
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


def _eager_with_pattern_hook(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None,
                             dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention that exposes the probabilities to ``attn_pattern`` hooks (read and write)."""
    config = getattr(module, "config", None)
    if config is not None and not _wants_pattern(config):
        original = _original_attention(module, config)
        if original is not None:
            return original(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # grouped-query attention: repeat key/value heads
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    softcap = kwargs.get("softcap")
    if softcap:
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, : key.shape[-2]]
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    for hook in tuple(_PATTERN_HOOKS.get(module, ())):  # each hook checks that its own session is open here
        weights = hook(weights)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


AttentionInterface.register(PATTERN_ATTENTION, _eager_with_pattern_hook)
AttentionMaskInterface.register(PATTERN_ATTENTION, _pattern_mask)


class Session:
    """State of one attach: the forward context, stashed residuals, and the interventions per site."""

    def __init__(self, model: HookedModel, interventions: list[Intervention]) -> None:
        self.model = model
        self.interventions = interventions
        self.ctx: ForwardContext | None = None
        self.per_site: dict[Site, list[Intervention]] = {}
        for iv in interventions:
            for site in iv.sites(model):
                self.per_site.setdefault(site, []).append(iv)
        self._resid_pre: dict[int, torch.Tensor] = {}
        self.wants_pattern = any(s.kind == "attn_pattern" for s in self.per_site)

    def is_active(self) -> bool:
        """Whether this session is open in the current context (its hooks act only then)."""
        return self in _ACTIVE.get()

    @property
    def cache(self) -> Any:
        """What every ``Cache`` of this session recorded, as an :class:`ActivationCache`."""
        return session_cache(self.model, self)

    def run_site(self, site: Site, value: torch.Tensor) -> torch.Tensor | None:
        """Pass ``value`` through the site's interventions in order; None if none changed it."""
        assert self.ctx is not None, "forward context missing: was the model called through its top module?"
        changed = False
        for iv in self.per_site[site]:
            new = iv(value, site, self.ctx)
            if new is not None:
                if not iv.writes:
                    raise InputError(f"{type(iv).__name__} is read-only (writes = False) but returned a value at "
                                     f"{site.name}; a reader returns None (or declare writes = True).")
                value, changed = new, True
        return value if changed else None


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, new: torch.Tensor) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _context_prehook(session: Session) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
        if kwargs is None or not session.is_active():
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        assert ref is not None, "the model was called without input_ids or inputs_embeds"
        batch, seq = int(ref.shape[0]), int(ref.shape[1])
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        offset = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        mask = kwargs.get("attention_mask")
        if mask is None or mask.dim() != 2:
            mask = torch.ones(batch, offset + seq, dtype=torch.long, device=ref.device)
        session.ctx = ForwardContext.from_mask(mask, offset, seq, session.ctx)
        session._resid_pre.clear()

    return hook


def _logits_hook(session: Session, site: Site) -> Callable[..., Any]:
    """Forward hook on the causal-LM module: run the ``logits`` site on the logits it returns."""
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            new = session.run_site(site, output[0])
            return None if new is None else (new, *output[1:])
        new = session.run_site(site, output.logits)
        if new is not None:
            output.logits = new
        return output
    return hook


def _copying(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an output hook so HF receives a copy (for modules whose output HF then updates in place)."""
    def wrapped(module: nn.Module, args: Any, output: Any) -> Any:
        new = hook(module, args, output)
        out = output if new is None else new
        return _replace_first(out, _first(out).clone())
    return wrapped


def _attach_site(session: Session, site: Site, handles: list[RemovableHandle]) -> None:
    model, arch = session.model, session.model.arch

    def out_hook(module: nn.Module, args: Any, output: Any) -> Any:
        if not session.is_active():
            return None
        new = session.run_site(site, _first(output))
        return None if new is None else _replace_first(output, new)

    kind, layer = site.kind, site.layer
    if kind == "logits":  # what the model returns: after any logit scale / soft-cap of its head
        handles.append(model.hf_model.register_forward_hook(_logits_hook(session, site)))
        return
    if kind in MODEL_SITES:
        path = {"embed": arch.embed, "final_norm": arch.final_norm}[kind]
        handles.append(model.module(path).register_forward_hook(out_hook))
        return
    assert layer is not None
    block = model.layer_module(layer)
    if kind == "resid_pre":
        def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Any:
            if kwargs is None or not session.is_active():
                return None
            value = args[0] if args else kwargs["hidden_states"]
            new = session.run_site(site, value)
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}
        handles.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True))
    elif kind == "resid_post":
        handles.append(block.register_forward_hook(out_hook))
    elif kind == "attn_out":  # the contribution to the residual: after a post-attention norm if there is one
        handles.append(model.module(arch.attn_out_path(layer)).register_forward_hook(out_hook))
    elif kind == "mlp_out":
        hook = _copying(out_hook) if arch.mlp_output_mutated else out_hook
        handles.append(model.module(arch.mlp_out_path(layer)).register_forward_hook(hook))
    elif kind == "head_z":
        o_proj = model.module(f"{arch.layers}.{layer}.{arch.attn}.{arch.o_proj}")

        def z_hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
            if not session.is_active():
                return None
            z = args[0]
            heads = z.reshape(*z.shape[:-1], model.n_heads, model.d_head)
            new = session.run_site(site, heads)
            return None if new is None else (new.reshape(z.shape), *args[1:])
        handles.append(o_proj.register_forward_pre_hook(z_hook))
    elif kind == "attn_pattern":
        attn = model.module(f"{arch.layers}.{layer}.{arch.attn}")

        def pattern_hook(weights: torch.Tensor) -> torch.Tensor:
            if not session.is_active():
                return weights
            new = session.run_site(site, weights)
            return weights if new is None else new
        with _PATTERN_LOCK:
            _PATTERN_HOOKS[attn] = [*_PATTERN_HOOKS.get(attn, ()), pattern_hook]
        if model.attention_port is not None:  # attention computed inline: run the adapter's port instead
            attn.forward = functools.partial(model.attention_port, attn, _eager_with_pattern_hook)

        class _Unregister:
            def remove(self) -> None:
                with _PATTERN_LOCK:
                    rest = [h for h in _PATTERN_HOOKS.get(attn, ()) if h is not pattern_hook]
                    if rest:
                        _PATTERN_HOOKS[attn] = rest
                    else:
                        _PATTERN_HOOKS.pop(attn, None)
                        attn.__dict__.pop("forward", None)
        handles.append(_Unregister())  # type: ignore[arg-type]
    elif kind == "resid_mid":
        # resid_mid = resid_pre + attn_out, read where HF adds them; a write is turned into the
        # attention contribution (after any post-attention norm) that produces it (exact up to one
        # rounding of the subtraction).
        stash = session._resid_pre

        def stash_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
            if kwargs is None or not session.is_active():
                return
            stash[layer] = args[0] if args else kwargs["hidden_states"]
        handles.append(block.register_forward_pre_hook(stash_hook, with_kwargs=True))

        def mid_hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not session.is_active():
                return None
            base = stash.pop(layer)
            attn = _first(output)
            new = session.run_site(site, base + attn)
            return None if new is None else _replace_first(output, new - base)
        handles.append(model.module(arch.attn_out_path(layer)).register_forward_hook(mid_hook))
    else:  # pragma: no cover - sites.py rejects unknown kinds first
        raise AssertionError(kind)


_ORDER = {k: i for i, k in enumerate(("embed", *LAYER_SITES, "final_norm", "logits"))}


def _forward_order(site: Site) -> tuple[int, int]:
    layer = site.layer if site.layer is not None else (-1 if site.kind == "embed" else 1 << 30)
    return layer, _ORDER[site.kind]


@contextmanager
def attach(model: HookedModel, interventions: list[Intervention]) -> Iterator[Session]:
    """Attach ``interventions`` to ``model`` for the body of the ``with``; always detach afterwards."""
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise InputError(f"Expected intervention objects (Cache, Steer, Patch, Ablate, Edit...), "
                             f"got {type(iv).__name__}.")
    for iv in interventions:  # validation and preparatory runs happen before any hook exists
        iv.bind(model)
    session = Session(model, interventions)
    handles: list[RemovableHandle] = []
    config = model.hf_model.config
    token = None
    try:
        for iv in interventions:
            iv.start()
        if session.per_site:
            handles.append(model.hf_model.register_forward_pre_hook(_context_prehook(session), with_kwargs=True))
            # register in forward order so that several kinds on one module run in the documented order
            for site in sorted(session.per_site, key=_forward_order):
                _attach_site(session, site, handles)
        if session.wants_pattern:
            _acquire_pattern(config)
        token = _ACTIVE.set((*_ACTIVE.get(), session))
        yield session
    finally:
        if token is not None:
            _deactivate(session, token)
        for h in handles:
            h.remove()
        if session.wants_pattern and token is not None:
            _release_pattern(config)


def _deactivate(session: Session, token: Any) -> None:
    try:
        _ACTIVE.reset(token)
    except ValueError:  # closed from another context than the one that opened it
        _ACTIVE.set(tuple(s for s in _ACTIVE.get() if s is not session))


def _acquire_pattern(config: Any) -> None:
    """Point the config at the pattern-exposing attention while at least one session wants patterns."""
    with _PATTERN_LOCK:
        entry = _PATTERN_USERS.get(id(config))
        if entry is None:
            _PATTERN_USERS[id(config)] = [config, 1, getattr(config, "_attn_implementation_internal", None)]
            config._attn_implementation_internal = PATTERN_ATTENTION
        else:
            entry[1] += 1


def _release_pattern(config: Any) -> None:
    with _PATTERN_LOCK:
        entry = _PATTERN_USERS[id(config)]
        entry[1] -= 1
        if entry[1] == 0:
            config._attn_implementation_internal = entry[2]
            del _PATTERN_USERS[id(config)]
