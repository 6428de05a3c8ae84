"""What ``heads=`` and ``neurons=`` select at each site of ``Ablate``, ``Patch`` and ``Cache``: some indices of
one axis of the site's value.

- Heads are an axis of every per-head kind (:data:`HEAD_AXES`): axis 2 of ``[batch, pos, heads, ...]`` values
  (``q``, ``k``, ``v``, ``rot_q``, ``rot_k``, ``head_z``, ``head_out``), axis 1 of the attention maps
  ``[batch, heads, query, key]`` (``attn_scores``, ``attn_pattern``).
- On grouped-query models ``k``, ``v`` and ``rot_k`` hold one entry per *KV head* (:data:`KV_KINDS`), and
  ``heads=`` there counts KV heads, as TransformerLens's ``hook_k``/``hook_v`` and the tensor itself do
  (``cache["v.3"][:, :, h]``). KV head ``g`` serves query heads ``g * r .. g * r + r - 1`` (``r = n_heads //
  n_kv_heads``), so writing it changes all of them: :meth:`Selects.query_heads` lists them.
- Neurons are the last axis of ``mlp_pre``/``mlp_post`` ``[batch, pos, d_mlp]`` (:data:`NEURON_KINDS`).

Indices may be negative (from the end); they are checked against the model at bind time, repeats dropped and
the order kept (a ``Cache`` records them in that order). :class:`Selects` is the part the three interventions
share: parsing, binding, the per-site :class:`Selection` and what it touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, Union

import torch

from .errors import InputError
from .heads import HEAD_AXES, KV_KINDS, HeadSpec, bind_heads, encode_heads, pair_sites, parse_heads
from .sites import Site

if TYPE_CHECKING:
    from .model import HookedModel

NeuronSpec = Union[int, Sequence[int], None]

__all__ = ["HEAD_AXES", "KV_KINDS", "NEURON_KINDS", "NeuronSpec", "Selection", "Selects", "bind_selection",
           "parse_neurons", "query_heads_of"]

#: Kinds whose last axis is the MLP's neurons (``d_mlp`` entries).
NEURON_KINDS: tuple[str, ...] = ("mlp_pre", "mlp_post")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Selection:
    """``index`` (non-negative, in the order given) along axis ``dim`` of a site's batched value."""

    dim: int
    index: tuple[int, ...]

    def pick(self, value: torch.Tensor) -> torch.Tensor:
        """The selected entries, in selection order (the axis shrinks to ``len(index)``)."""
        return value.index_select(self.dim, torch.tensor(self.index, device=value.device))

    def mask(self, value: torch.Tensor) -> torch.Tensor:
        """Boolean mask broadcastable to ``value``: True on the selected entries of axis ``dim``."""
        mask = torch.zeros(value.shape[self.dim], dtype=torch.bool, device=value.device)
        mask[list(self.index)] = True
        return mask.reshape(*([1] * self.dim), -1, *([1] * (value.dim() - self.dim - 1)))


def parse_neurons(neurons: Any, site: Any, owner: str) -> list[int]:
    """``neurons`` (an int or a non-empty list of ints) of a named site; anything else is an InputError."""
    if site is None:
        raise InputError(f"{owner}(neurons=...) selects neurons of the named site(s); name them, e.g. "
                         f"{owner}('mlp_post.12', neurons=[1042]) (neurons live on {', '.join(NEURON_KINDS)}).")
    items = [neurons] if _is_int(neurons) else neurons
    if not isinstance(items, (list, tuple)) or not items or not all(_is_int(n) for n in items):
        raise InputError(f"neurons must be an int or a non-empty list of ints (indices of the MLP's hidden "
                         f"layer), got {neurons!r}.")
    return list(dict.fromkeys(int(n) for n in items))


def group_size(model: HookedModel) -> int:
    """Query heads per KV head (1 without grouped-query attention)."""
    return model.n_heads // model.n_kv_heads


def query_heads_of(model: HookedModel, kind: str, heads: Sequence[int]) -> list[int]:
    """The query heads that ``heads`` of a ``kind`` site act on: themselves, or every query head that reads
    the given KV heads on k/v/rot_k (grouped-query attention repeats KV head ``g`` for ``g*r .. g*r+r-1``)."""
    if kind not in KV_KINDS:
        return list(heads)
    r = group_size(model)
    return [g * r + i for g in heads for i in range(r)]


def _bind_neurons(model: HookedModel, sites: list[Site], ints: list[int]) -> dict[Site, list[int]]:
    for s in sites:
        if s.kind not in NEURON_KINDS:
            raise InputError(f"neurons= selects MLP neurons, the last axis of {' and '.join(NEURON_KINDS)} "
                             f"[batch, pos, d_mlp]; {s.name} has none (name 'mlp_post.L' or 'mlp_pre.L').")
    d_mlp = model.d_mlp
    bad = [n for n in ints if not -d_mlp <= n < d_mlp]
    if bad:
        raise InputError(f"Neuron index {bad[0]} out of range: this model's MLPs have {d_mlp} neurons "
                         f"(valid 0..{d_mlp - 1}, or -{d_mlp}..-1 from the end).")
    chosen = list(dict.fromkeys(n % d_mlp for n in ints))
    return {s: chosen for s in sites}


def bind_selection(model: HookedModel, sites: list[Site], ints: list[int] | None,
                   pairs: list[tuple[int, int]] | None, neurons: list[int] | None) -> dict[Site, Selection] | None:
    """Validate a selection against ``model``: the :class:`Selection` of each selected site, or None (whole sites)."""
    if neurons is not None:
        return {s: Selection(2, tuple(n)) for s, n in _bind_neurons(model, sites, neurons).items()}
    by_site = bind_heads(model, sites, ints, pairs)
    if by_site is None:
        return None
    return {s: Selection(HEAD_AXES[s.kind], tuple(h)) for s, h in by_site.items()}


class Selects:
    """The ``heads=`` / ``neurons=`` part shared by ``Ablate``, ``Patch`` and ``Cache`` (a mixin)."""

    _ints: list[int] | None
    _pairs: list[tuple[int, int]] | None
    _neurons: list[int] | None
    heads: list[int] | list[tuple[int, int]] | None
    neurons: list[int] | None
    _selection: dict[Site, Selection] | None = None
    _selection_model: HookedModel | None = None

    def _parse_selection(self, site: Any, heads: HeadSpec, neurons: NeuronSpec, owner: str) -> Any:
        """Parse ``heads``/``neurons``; returns the site spec (the ``head_z`` sites of (layer, head) pairs)."""
        if heads is not None and neurons is not None:
            raise InputError(f"{owner} takes heads= or neurons=, not both: heads live on per-head sites (q, k, v, "
                             "head_z...), neurons on mlp_pre/mlp_post; use one intervention for each.")
        self._neurons = parse_neurons(neurons, site, owner) if neurons is not None else None
        self._ints, self._pairs = parse_heads(heads, site, owner) if neurons is None else (None, None)
        self.heads = self._pairs if self._pairs is not None else self._ints
        self.neurons = self._neurons
        return site if site is not None else pair_sites(self._pairs or [])

    def _bind_selection(self, model: HookedModel, sites: list[Site]) -> None:
        self._selection = bind_selection(model, sites, self._ints, self._pairs, self._neurons)
        self._selection_model = model

    def _selected(self, site: str | Site) -> tuple[Site, Selection] | None:
        model = self._selection_model
        if model is None or self._selection is None:
            return None
        s = model.resolve(site)[0] if not isinstance(site, Site) else site
        sel = self._selection.get(s)
        return None if sel is None else (s, sel)

    def selected_heads(self, site: str | Site) -> list[int] | None:
        """The heads selected at ``site`` (in record order; KV heads on k/v/rot_k), or None (no head selection)."""
        found = self._selected(site)
        return None if found is None or self._neurons is not None else list(found[1].index)

    def selected_neurons(self, site: str | Site) -> list[int] | None:
        """The neurons selected at ``site`` (in record order), or None (no neuron selection)."""
        found = self._selected(site)
        return None if found is None or self._neurons is None else list(found[1].index)

    def query_heads(self, site: str | Site) -> list[int] | None:
        """The query heads the selection at ``site`` acts on: the selected heads, or on k/v/rot_k every query head
        that reads a selected KV head (on grouped-query models one KV head serves several). None without heads."""
        found = self._selected(site)
        if found is None or self._neurons is not None or self._selection_model is None:
            return None
        return query_heads_of(self._selection_model, found[0].kind, found[1].index)

    def _selection_config(self) -> dict[str, Any]:
        return {"heads": encode_heads(self._ints, self._pairs), "neurons": self._neurons}
