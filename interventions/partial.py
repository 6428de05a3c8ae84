"""Partial forwards: run the decoder from layer ``L`` on a given residual, after a cached prefix.

Activation patching changes nothing upstream of the patch: layers below the patched
layer and (causal attention) positions before the patched token. These helpers let a
client skip that work while the model still runs its *own* HF forward (masks, rotary
embeddings, KV cache and every lmscope hook behave as usual):

- :func:`forward_with_kv` runs a prompt once and keeps its KV cache;
- :func:`kv_prefix` cuts that cache to its first ``p`` tokens and repeats it per batch row;
- :func:`partial_model` yields the module to call for a forward that starts at layer ``start``
  (and, optionally, unembeds with a smaller head);
- :func:`run_from_layer` runs layers ``start..n-1`` on ``hidden`` (the ``resid_pre.start``
  value of the new tokens), after an optional prefix cache, and unembeds only the last position.

How the skip works without touching the shared model: :func:`partial_model` builds a private
shell of the causal LM (:mod:`lmscope.interventions.local`) whose decoder holds ``layers[start:]``
(the same module objects, so every hook on them still fires) and, where the decoder indexes
``config.layer_types`` by loop position, a config copy with that list sliced the same way. A
pre-hook that acts only in the caller's context replaces layer ``start``'s input by ``hidden``;
the embedding of the new tokens is still computed (cheap) and then discarded. Other threads'
forwards, and plain calls of ``model.hf_model``, run the whole model as usual.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from .architectures import get_module
from .base import Interventions, as_interventions
from .errors import InputError
from .kv import build_cache, cache_kwarg, output_cache
from .local import config_copy, local_hooks, shell, shell_unsupported

if TYPE_CHECKING:
    from transformers import DynamicCache

    from .model import HookedModel


def partial_forward_unsupported(model: HookedModel, length: int | None = None) -> str | None:
    """Why partial forwards are not exact on ``model`` (None when they are).

    Sliding-window attention keeps only its window in the KV cache and builds its mask from cache positions,
    and ALiBi biases depend on absolute key positions; the prefix/layer skipping is verified against full
    forwards on every other battery architecture, and refused on these rather than trusted. ``length`` is
    the longest sequence (KV prefix plus new tokens) the forwards will hold: a sliding window longer than
    that masks no key and evicts nothing from the cache, so such forwards are exact (Gemma 2/3's 512+
    windows and prompts of a few dozen tokens). None means any length. A model whose decoder ``forward`` is
    wrapped on the instance (accelerate's device hooks) cannot be run through a private shell either.
    """
    config: Any = model.hf_model.config
    window = getattr(config, "sliding_window", None)
    if window and any(
            t == "sliding_attention" for t in (getattr(config, "layer_types", None) or ["sliding_attention"])):
        if length is None or length >= int(window):
            held = "" if length is None else f" of {length} tokens"
            return f"sliding-window attention (window {int(window)}, not longer than the sequences{held})"
    if getattr(config, "alibi", False):
        return "ALiBi position biases"
    return shell_unsupported(model.hf_model, [model.arch.layers, model.arch.unembed])


def _check_supported(model: HookedModel, length: int) -> None:
    reason = partial_forward_unsupported(model, length)
    if reason is not None:
        raise InputError(f"Partial forwards (KV prefix + start layer) are not exact on this {model.arch.name} model "
                         f"({reason}); run full forwards instead (e.g. patching_sweep(method='loop')).")


def forward_with_kv(model: HookedModel, input_ids: torch.Tensor,
                    interventions: Interventions = ()) -> tuple[torch.Tensor, Any]:
    """One unpadded forward over ``input_ids [batch, pos]`` that also returns the KV cache."""
    _check_supported(model, int(input_ids.shape[-1]))
    with model.apply(as_interventions(interventions)), torch.no_grad():
        out = model.hf_model(input_ids=input_ids.to(model.device), use_cache=True)
    return out.logits, output_cache(out)


def kv_prefix(model: HookedModel, cache: Any, length: int, batch: int,
              rows: torch.Tensor | None = None) -> DynamicCache | None:
    """A new cache holding the first ``length`` tokens of row 0 of ``cache``, repeated ``batch`` times.

    ``rows`` (``[batch]`` row indices into ``cache``) takes row ``rows[i]`` for batch row ``i`` instead,
    so one cache of several prompts serves a batch that mixes them. Returns None for ``length == 0``
    (no prefix). The source cache is not modified.
    """
    if length == 0:
        return None
    data = []
    for layer in cache.layers:
        k, v = layer.keys, layer.values
        if k.shape[-2] < length:
            raise InputError(f"The cache holds {k.shape[-2]} tokens; a prefix of {length} was asked for.")
        if rows is None:
            data.append((k[:1, :, :length].expand(batch, -1, -1, -1), v[:1, :, :length].expand(batch, -1, -1, -1)))
        else:
            idx = rows.to(k.device)
            data.append((k[idx, :, :length], v[idx, :, :length]))
    return build_cache(model, data)


@contextmanager
def partial_model(model: HookedModel, start: int = 0, hidden: torch.Tensor | None = None, *,
                  unembed: nn.Module | None = None) -> Iterator[nn.Module]:
    """Yield the module to call instead of ``model.hf_model``: it skips layers ``< start``, feeds ``hidden``
    into layer ``start``, and (``unembed``) uses another output head.

    Nothing shared changes: the yielded module is a private shell (:func:`lmscope.interventions.local.shell`)
    over the model's own modules, and the hook that feeds ``hidden`` acts only on this context's forwards, so
    other threads' forwards (and calls of ``model.hf_model`` here) run the whole model as usual. ``hidden``
    must have the shape the forward's residual stream will have (``[batch, new tokens, d_model]``); None
    keeps the model's own embedding (only meaningful with ``start == 0``). Refused (:class:`InputError`)
    where a shell cannot run the model's code (:func:`partial_forward_unsupported` says why).
    """
    if not 0 <= start < model.n_layers:
        raise InputError(f"start layer {start} is outside 0..{model.n_layers - 1}.")
    if hidden is None and start != 0:
        raise InputError("Starting above layer 0 needs the residual stream entering that layer.")
    hf = model.hf_model
    replace: dict[str, nn.Module] = {}
    config: Any = None
    if start:
        layers: Any = get_module(hf, model.arch.layers)
        replace[model.arch.layers] = nn.ModuleList(list(layers)[start:])
        types = getattr(hf.config, "layer_types", None)  # indexed by loop position in some decoders
        config = config_copy(hf.config, layer_types=list(types)[start:]) if isinstance(types, (list, tuple)) \
            else None
    if unembed is not None:
        replace[model.arch.unembed] = unembed
    reason = shell_unsupported(hf, replace)
    if reason is not None:
        raise InputError(f"Partial forwards cannot run on this model: {reason}.")
    forward = shell(hf, replace, config) if replace else hf
    if hidden is None:
        yield forward
        return

    def feed(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        current = args[0] if args else kwargs["hidden_states"]
        if tuple(current.shape) != tuple(hidden.shape):
            raise InputError(f"hidden has shape {tuple(hidden.shape)}; the forward's residual stream "
                             f"has {tuple(current.shape)}.")
        new = hidden.to(device=current.device, dtype=current.dtype)
        return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

    with local_hooks([(model.layer_module(start), feed)], pre=True, with_kwargs=True, prepend=True):
        yield forward


def run_from_layer(model: HookedModel, hidden: torch.Tensor | None, start: int, input_ids: torch.Tensor, *,
                   past: Any = None, interventions: Interventions = (), last_only: bool = True,
                   grad: bool = False) -> torch.Tensor:
    """Logits of the new tokens ``input_ids [batch, s]`` computed from layer ``start`` on.

    ``hidden`` is ``resid_pre.start`` of those tokens (``[batch, s, d_model]``); ``past`` an
    optional prefix cache (see :func:`kv_prefix`) holding the ``p`` tokens before them, which
    then sit at positions ``p..p+s-1``. Prompts are unpadded. ``interventions`` act as in
    :meth:`HookedModel.run` on the layers that run (token positions count the prefix too).
    Returns ``[batch, vocab]`` logits of the last token (``last_only``) or ``[batch, s, vocab]``.
    Equals the matching slice of a full forward up to float rounding (tested per architecture).
    """
    ids = input_ids.to(model.device)
    batch, s = ids.shape
    p = int(past.get_seq_length()) if past is not None else 0
    _check_supported(model, p + s)
    mask = torch.ones(batch, p + s, dtype=torch.long, device=ids.device)
    pos = torch.arange(p, p + s, device=ids.device).expand(batch, -1)
    kwargs: dict[str, Any] = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=past is not None)
    if past is not None:
        kwargs[cache_kwarg(model)] = past
    if last_only:
        kwargs["logits_to_keep"] = 1
    with model.apply(as_interventions(interventions)), partial_model(model, start, hidden) as forward, \
            (nullcontext() if grad else torch.no_grad()):
        logits = forward(**kwargs).logits
    return logits[:, -1] if last_only else logits
