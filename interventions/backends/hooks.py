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

Sites inside attention (``rot_q``, ``rot_k``, ``attn_scores``, ``attn_pattern``) need the
attention function itself; scores and probabilities need an eager attention, which SDPA never
is. While any session wants one of them the model's config points at an attention function
(and mask) of ours, which runs the hooks, then the eager attention for contexts that want scores
or probabilities and the model's original implementation for every other forward, so other
threads' forwards are unchanged.

Every other kind attaches through one entry of :data:`ATTACH` (kind -> attach function); most are
one hook on the module side that :data:`lmscope.interventions.locations.MODULE_SITES` names.
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
from ..local import base_config
from ..locations import ATTENTION_FUNCTION_SITES, EAGER_SITES, MODULE_SITES, head_out_value
from ..positions import ForwardContext
from ..sites import LAYER_SITES, Site

if TYPE_CHECKING:
    from ..model import HookedModel

PATTERN_ATTENTION = "lmscope_eager"
#: attention module -> site kind (rot_q, rot_k, attn_scores, attn_pattern) -> hooks, outer sessions first
_PATTERN_HOOKS: dict[nn.Module, dict[str, list[Callable[[torch.Tensor, int], torch.Tensor]]]] = {}
#: The sessions open in the current context (thread / asyncio task), outermost first.
_ACTIVE: ContextVar[tuple[Session, ...]] = ContextVar("lmscope_sessions", default=())
_PATTERN_LOCK = threading.Lock()
#: id(config) -> [config, number of open sessions using our attention function, original attention implementation]
_PATTERN_USERS: dict[int, list[Any]] = {}


def _wants_pattern(config: Any) -> bool:
    """Whether a session open in the current context needs the eager attention (``attn_scores``/``attn_pattern``)
    on this config's model."""
    config = base_config(config)  # a partial forward's config copy stands for the model's own
    return any(s.wants_pattern and s.model.hf_model.config is config for s in _ACTIVE.get())


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


def _run_hooks(hooks: dict[str, list[Callable[[torch.Tensor, int], torch.Tensor]]], kind: str,
               value: torch.Tensor, q_len: int) -> torch.Tensor:
    for hook in tuple(hooks.get(kind, ())):  # each hook checks that its own session is open here
        value = hook(value, q_len)
    return value


def _eager_with_pattern_hook(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
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
        #: whether this session needs the eager attention (scores / probabilities), or only our attention function
        self.wants_pattern = any(s.kind in EAGER_SITES for s in self.per_site)
        self.wants_attention_fn = any(s.kind in ATTENTION_FUNCTION_SITES for s in self.per_site)

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


Attacher = Callable[[Session, Site, list[RemovableHandle]], None]


def _attach_module_site(session: Session, site: Site, handles: list[RemovableHandle]) -> None:
    """A kind of :data:`MODULE_SITES`: one hook on one side of one module, through the entry's read/write."""
    model = session.model
    loc = MODULE_SITES[site.kind]
    module = model.module(loc.path(model, site.layer))
    if loc.side == "output":
        def out_hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not session.is_active():
                return None
            raw = _first(output)
            new = session.run_site(site, loc.read(model, site, raw))
            return None if new is None else _replace_first(output, loc.write(model, site, raw, new))
        handles.append(module.register_forward_hook(_copying(out_hook) if loc.copy(model.arch) else out_hook))
        return

    def in_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not session.is_active():
            return None
        raw = args[0] if args else kwargs["hidden_states"]
        new = session.run_site(site, loc.read(model, site, raw))
        if new is None:
            return None
        new = loc.write(model, site, raw, new)
        return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
    handles.append(module.register_forward_pre_hook(in_hook, with_kwargs=True))


def _attach_logits(session: Session, site: Site, handles: list[RemovableHandle]) -> None:
    """What the model returns: after any logit scale / soft-cap of its head."""
    handles.append(session.model.hf_model.register_forward_hook(_logits_hook(session, site)))


def _attach_head_out(session: Session, site: Site, handles: list[RemovableHandle]) -> None:
    """Per-head outputs computed from the output projection's input; a write adds Σ_h (new - old) to its output
    (so an unchanged value leaves the output bit for bit as it was)."""
    model, layer = session.model, site.layer
    assert layer is not None

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not session.is_active():
            return None
        per_head = head_out_value(model, layer, args[0])
        new = session.run_site(site, per_head)
        if new is None:
            return None
        return _replace_first(output, _first(output) + (new - per_head).sum(2))
    handles.append(model.module(MODULE_SITES["head_z"].path(model, layer)).register_forward_hook(hook))


def _attach_attention_function(session: Session, site: Site, handles: list[RemovableHandle]) -> None:
    """rot_q / rot_k / attn_scores / attn_pattern: a hook inside our attention function (see module docs)."""
    model, kind = session.model, site.kind
    attn = model.module(f"{model.arch.layers}.{site.layer}.{model.arch.attn}")

    def attention_hook(value: torch.Tensor, q_len: int) -> torch.Tensor:
        if not session.is_active():
            return value
        if kind in EAGER_SITES:
            new = session.run_site(site, value)
            return value if new is None else new
        own = value[:, :, value.shape[2] - q_len:]  # keys: this forward's tokens (a KV cache holds the rest)
        new = session.run_site(site, own.transpose(1, 2))
        if new is None:
            return value
        new = new.transpose(1, 2)
        return new if own.shape[2] == value.shape[2] else torch.cat([value[:, :, : value.shape[2] - q_len], new], 2)

    with _PATTERN_LOCK:
        per_kind = _PATTERN_HOOKS.setdefault(attn, {})
        per_kind[kind] = [*per_kind.get(kind, ()), attention_hook]
    if model.attention_port is not None:  # attention computed inline: run the adapter's port, which calls ours
        attn.forward = functools.partial(model.attention_port, attn, _eager_with_pattern_hook)

    class _Unregister:
        def remove(self) -> None:
            with _PATTERN_LOCK:
                per_kind = _PATTERN_HOOKS.get(attn, {})
                rest = [h for h in per_kind.get(kind, ()) if h is not attention_hook]
                if rest:
                    per_kind[kind] = rest
                else:
                    per_kind.pop(kind, None)
                if not per_kind:
                    _PATTERN_HOOKS.pop(attn, None)
                    attn.__dict__.pop("forward", None)
    handles.append(_Unregister())  # type: ignore[arg-type]


def _attach_resid_mid(session: Session, site: Site, handles: list[RemovableHandle]) -> None:
    """resid_mid = resid_pre + attn_out, read where HF adds them; a write is turned into the attention contribution
    (after any post-attention norm) that produces it (exact up to one rounding of the subtraction)."""
    model, layer = session.model, site.layer
    assert layer is not None
    stash = session._resid_pre

    def stash_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if session.is_active():
            stash[layer] = args[0] if args else kwargs["hidden_states"]
    handles.append(model.layer_module(layer).register_forward_pre_hook(stash_hook, with_kwargs=True))

    def mid_hook(module: nn.Module, args: Any, output: Any) -> Any:
        if not session.is_active():
            return None
        base = stash.pop(layer)
        new = session.run_site(site, base + _first(output))
        return None if new is None else _replace_first(output, new - base)
    handles.append(model.module(model.arch.attn_out_path(layer)).register_forward_hook(mid_hook))


#: One attach function per site kind (every kind of sites.py has an entry).
ATTACH: dict[str, Attacher] = {
    **dict.fromkeys(MODULE_SITES, _attach_module_site),
    **dict.fromkeys(ATTENTION_FUNCTION_SITES, _attach_attention_function),
    "head_out": _attach_head_out,
    "resid_mid": _attach_resid_mid,
    "logits": _attach_logits,
}


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
                ATTACH[site.kind](session, site, handles)
        if session.wants_attention_fn:
            _acquire_pattern(config)
        token = _ACTIVE.set((*_ACTIVE.get(), session))
        yield session
    finally:
        if token is not None:
            _deactivate(session, token)
        for h in handles:
            h.remove()
        if session.wants_attention_fn and token is not None:
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
