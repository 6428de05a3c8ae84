"""The PyTorch-hooks backend: attach interventions to HF modules for one session, always detach.

``attach(model, interventions)`` is a context manager. On entry it opens a session (validate, bind, group
per site, start: :func:`lmscope.interventions.backends.session.open_session`), registers at most one hook
per site, in forward order, plus one pre-hook on the whole model that builds the :class:`ForwardContext` of
each forward. On exit (normal, exception or KeyboardInterrupt) every handle is removed and the attention
implementation restored. Only sites that were asked for get hooks.

Sessions are context-local. The hooks live on modules shared by every caller, so each hook first checks
that its session is open in the *current* context (:meth:`Session.is_active`: per thread, and per asyncio
task); forwards run elsewhere pass through untouched. Two threads with different interventions on one model
therefore get exactly what each would get alone. Python threads start with an empty context, so a thread
started inside a session does not inherit it; an asyncio task created inside one does (tasks copy the
context).

Nested sessions compose: inside an inner session the outer one still applies, and at a site both use the
outer's interventions run first (as if the inner list were appended to the outer's); leaving the inner
session restores the outer alone.

Sites inside attention (``rot_q``, ``rot_k``, ``attn_scores``, ``attn_pattern``) are hooks inside an
attention function of ours, which the model's config points at while any session wants one of them (see
:mod:`lmscope.interventions.backends.attention`); other threads' forwards are unchanged.

Every other kind attaches through one entry of :data:`ATTACH` (kind -> attach function); most are
one hook on the module side that :data:`lmscope.interventions.locations.MODULE_SITES` names.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import torch
from torch import nn

from ..base import Intervention
from ..locations import ATTENTION_FUNCTION_SITES, EAGER_SITES, MODULE_SITES, head_out_value
from ..positions import ForwardContext
from ..sites import Site
from . import attention
from .session import Session, activated, forward_order, open_session

if TYPE_CHECKING:
    from ..model import HookedModel


class Handle(Protocol):
    """What an attach function leaves behind: something to remove when the session closes."""

    def remove(self) -> None: ...


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, new: torch.Tensor) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


#: PyTorch registers a pre-hook "with kwargs" in two steps (the hook, then its kwargs flag); a forward another thread
#: runs in between calls it as ``hook(module, args)``. That thread's forward is never the hook's own session (a session
#: registers before its own forwards), so every kwargs pre-hook takes ``kwargs=None`` and then does nothing.
_KWARGS_RACE = "a pre-hook called without kwargs while another thread registers it"


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
        session.resid_pre.clear()

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


Attacher = Callable[[Session, Site, list[Handle]], None]


def _attach_module_site(session: Session, site: Site, handles: list[Handle]) -> None:
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

    def in_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Any:
        if kwargs is None or not session.is_active():  # None: see _KWARGS_RACE
            return None
        raw = args[0] if args else kwargs["hidden_states"]
        new = session.run_site(site, loc.read(model, site, raw))
        if new is None:
            return None
        new = loc.write(model, site, raw, new)
        return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
    handles.append(module.register_forward_pre_hook(in_hook, with_kwargs=True))


def _attach_logits(session: Session, site: Site, handles: list[Handle]) -> None:
    """What the model returns: after any logit scale / soft-cap of its head."""
    handles.append(session.model.hf_model.register_forward_hook(_logits_hook(session, site)))


def _attach_head_out(session: Session, site: Site, handles: list[Handle]) -> None:
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


def _attach_attention_function(session: Session, site: Site, handles: list[Handle]) -> None:
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

    handles.append(attention.add_hook(attn, kind, attention_hook, model.attention_port))


def _attach_resid_mid(session: Session, site: Site, handles: list[Handle]) -> None:
    """resid_mid = resid_pre + attn_out, read where HF adds them; a write is turned into the attention contribution
    (after any post-attention norm) that produces it (exact up to one rounding of the subtraction)."""
    model, layer = session.model, site.layer
    assert layer is not None
    stash = session.resid_pre

    def stash_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
        if kwargs is not None and session.is_active():  # None: see _KWARGS_RACE
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




@contextmanager
def attach(model: HookedModel, interventions: list[Intervention]) -> Iterator[Session]:
    """Attach ``interventions`` to ``model`` for the body of the ``with``; always detach afterwards."""
    session = open_session(model, interventions)  # validation and preparatory runs before any hook exists
    handles: list[Handle] = []
    config = model.hf_model.config
    acquired = False
    try:
        if session.per_site:
            handles.append(model.hf_model.register_forward_pre_hook(_context_prehook(session), with_kwargs=True))
            # register in forward order so that several kinds on one module run in the documented order
            for site in sorted(session.per_site, key=forward_order):
                ATTACH[site.kind](session, site, handles)
        if session.wants_attention_fn:
            attention.acquire(config)
            acquired = True
        with activated(session):
            yield session
    finally:
        for h in handles:
            h.remove()
        if acquired:
            attention.release(config)
