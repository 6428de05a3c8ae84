"""The PyTorch-hooks backend: attach interventions to HF modules for one session, always detach.

``attach(model, interventions)`` is a context manager. On entry it resolves
every site, groups interventions per site (list order kept), registers at most
one hook per site plus one pre-hook on the whole model that builds the
:class:`ForwardContext` of each forward. On exit (normal, exception or
KeyboardInterrupt) every handle is removed and the attention implementation
restored. Only sites that were asked for get hooks.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from ..base import Intervention
from ..cache import session_cache
from ..errors import InputError
from ..positions import ForwardContext
from ..sites import LAYER_SITES, MODEL_SITES, Site

if TYPE_CHECKING:
    from ..model import HookedModel

PATTERN_ATTENTION = "lmscope_eager"
_PATTERN_HOOKS: dict[nn.Module, Callable[[torch.Tensor], torch.Tensor]] = {}


def _eager_with_pattern_hook(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None,
                             dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention that exposes the probabilities to ``attn_pattern`` hooks (read and write)."""
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
    hook = _PATTERN_HOOKS.get(module)
    if hook is not None:
        weights = hook(weights)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


AttentionInterface.register(PATTERN_ATTENTION, _eager_with_pattern_hook)
AttentionMaskInterface.register(PATTERN_ATTENTION, eager_mask)


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
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
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


def _attach_site(session: Session, site: Site, handles: list[RemovableHandle]) -> None:
    model, arch = session.model, session.model.arch

    def out_hook(module: nn.Module, args: Any, output: Any) -> Any:
        new = session.run_site(site, _first(output))
        return None if new is None else _replace_first(output, new)

    kind, layer = site.kind, site.layer
    if kind in MODEL_SITES:
        path = {"embed": arch.embed, "final_norm": arch.final_norm, "logits": arch.unembed}[kind]
        handles.append(model.module(path).register_forward_hook(out_hook))
        return
    assert layer is not None
    block = model.layer_module(layer)
    if kind == "resid_pre":
        def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
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
    elif kind == "attn_out":
        handles.append(model.module(f"{arch.layers}.{layer}.{arch.attn}").register_forward_hook(out_hook))
    elif kind == "mlp_out":
        handles.append(model.module(f"{arch.layers}.{layer}.{arch.mlp}").register_forward_hook(out_hook))
    elif kind == "head_z":
        o_proj = model.module(f"{arch.layers}.{layer}.{arch.attn}.{arch.o_proj}")

        def z_hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
            z = args[0]
            heads = z.reshape(*z.shape[:-1], model.n_heads, model.d_head)
            new = session.run_site(site, heads)
            return None if new is None else (new.reshape(z.shape), *args[1:])
        handles.append(o_proj.register_forward_pre_hook(z_hook))
    elif kind == "attn_pattern":
        attn = model.module(f"{arch.layers}.{layer}.{arch.attn}")

        def pattern_hook(weights: torch.Tensor) -> torch.Tensor:
            new = session.run_site(site, weights)
            return weights if new is None else new
        _PATTERN_HOOKS[attn] = pattern_hook

        class _Unregister:
            def remove(self) -> None:
                _PATTERN_HOOKS.pop(attn, None)
        handles.append(_Unregister())  # type: ignore[arg-type]
    elif kind == "resid_mid":
        # resid_mid = resid_pre + attn_out, read where HF adds them; a write is turned into the
        # attention output that produces it (exact up to one rounding of the subtraction).
        stash = session._resid_pre

        def stash_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            stash[layer] = args[0] if args else kwargs["hidden_states"]
        handles.append(block.register_forward_pre_hook(stash_hook, with_kwargs=True))

        def mid_hook(module: nn.Module, args: Any, output: Any) -> Any:
            base = stash.pop(layer)
            attn = _first(output)
            new = session.run_site(site, base + attn)
            return None if new is None else _replace_first(output, new - base)
        attn_mod = model.module(f"{arch.layers}.{layer}.{arch.attn}")
        handles.append(attn_mod.register_forward_hook(mid_hook))
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
    config: Any = model.hf_model.config
    old_impl = getattr(config, "_attn_implementation_internal", None)
    wants_pattern = any(s.kind == "attn_pattern" for s in session.per_site)
    try:
        for iv in interventions:
            iv.start()
        if session.per_site:
            handles.append(model.hf_model.register_forward_pre_hook(_context_prehook(session), with_kwargs=True))
            # register in forward order so that several kinds on one module run in the documented order
            for site in sorted(session.per_site, key=_forward_order):
                _attach_site(session, site, handles)
        if wants_pattern:
            config._attn_implementation_internal = PATTERN_ATTENTION
        yield session
    finally:
        for h in handles:
            h.remove()
        if wants_pattern:
            config._attn_implementation_internal = old_impl
