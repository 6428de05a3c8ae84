"""``Patch``: overwrite a site's value at chosen token positions with values from another run.

Values live in *token coordinates* (``[batch or 1, tokens, ...]``, no padding):
row ``i`` / token ``t`` of the target takes row ``i`` (or the single row) /
token ``source_positions[k]`` of the source, where ``t = positions[k]``; without
``source_positions`` token ``t`` takes source token ``t``. That is the shape of
activation patching and of binding-ID swaps (entity spans moved between prompts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .base import Intervention, decode_positions, encode_positions
from .errors import InputError
from .heads import HeadSpec, bind_heads, decode_heads
from .positions import ForwardContext, PositionSpec, _row_indices, position_mask, token_indices, validate_positions
from .selection import NeuronSpec, Selects
from .sites import ATTENTION_MAP_SITES, Site

if TYPE_CHECKING:
    from .model import HookedModel

def to_token_coordinates(value: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Drop padding from a padded ``[batch, pos, ...]`` tensor: rows become left-aligned, zero-filled at the end."""
    if attention_mask is None:
        return value
    keep = attention_mask.bool().to(value.device)
    lengths = keep.sum(1)
    out = value.new_zeros(value.shape[0], int(lengths.max()), *value.shape[2:])
    for i in range(value.shape[0]):
        out[i, : int(lengths[i])] = value[i][keep[i]]
    return out


class Patch(Selects, Intervention):
    """Overwrite ``site`` at ``positions`` with patched values.

    ``values_or_source`` is one of: a float tensor ``[tokens, ...]`` or
    ``[batch, tokens, ...]`` in token coordinates (shared by every site named);
    a dict ``{site_name: tensor}``; an :class:`ActivationCache` from an earlier
    run (``result.cache``); or source prompt(s) / token ids, which are run first
    (no other intervention active) to get the values.

    ``heads`` writes only some heads of per-head sites and keeps the others: head indices of the
    named site(s) (``Patch("head_z.3", src, heads=[1])``; also ``q``, ``k``, ``v``, ``rot_q``, ``rot_k``,
    ``head_out``) or (layer, head) pairs across layers without a site (``Patch(None, src, heads=[(3, 1),
    (5, 0)])``). On ``k``/``v``/``rot_k`` the indices count KV heads: on a grouped-query model patching one
    changes every query head of its group, and ``query_heads(site)`` lists them. ``neurons`` writes only some
    neurons of ``mlp_pre``/``mlp_post`` (``Patch("mlp_post.12", src, neurons=[1042])``). The values cover
    the whole site either way; see :mod:`lmscope.interventions.selection`.

    Attention maps (``attn_scores``, ``attn_pattern``) are not patched: their key axis has no token
    coordinates shared across prompts of different lengths; ``Edit`` writes them, and
    ``lmscope.probes.patching.patching_sweep`` patches their rows between prompt pairs of one length.
    """

    def __init__(self, site: str | list[str] | None = None, values_or_source: Any = None,
                 positions: PositionSpec = None, source_positions: PositionSpec = None, *,
                 heads: HeadSpec = None, neurons: NeuronSpec = None) -> None:
        super().__init__(self._parse_selection(site, heads, neurons, "Patch"), positions)
        if values_or_source is None:
            raise InputError("Patch needs values_or_source: a float tensor, a dict of tensors, an ActivationCache, "
                             "or source prompt(s) / token ids.")
        self.source_positions = validate_positions(source_positions)
        if self.source_positions is not None and (isinstance(self.source_positions, str) or self.positions is None
                                                  or isinstance(self.positions, str)):
            raise InputError("source_positions needs explicit positions (ints, lists or slices) on both sides, "
                             "one source token per target token.")
        self.source: Any = None
        self._given: torch.Tensor | None = None
        self._by_name: dict[str, torch.Tensor] = {}
        self._values: dict[Site, torch.Tensor] = {}
        from .cache import ActivationCache

        v = values_or_source
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            if v.dim() < 2:
                raise InputError(f"Patch values need shape [tokens, ...] or [batch, tokens, ...], "
                                 f"got {tuple(v.shape)}.")
            self._given = v.detach()
        elif isinstance(v, dict):
            if not v:
                raise InputError("Patch got an empty dict of values.")
            self._by_name = {str(k): t.detach() for k, t in v.items()}
        elif isinstance(v, ActivationCache):
            self._by_name = {name: to_token_coordinates(v[name], v.attention_mask) for name in v}
        elif isinstance(v, (str, list)) or (isinstance(v, torch.Tensor) and not v.is_floating_point()):
            if isinstance(v, (str, list)) and len(v) == 0:
                raise InputError("Patch source is empty.")
            self.source = v
        else:
            raise InputError(f"Patch cannot use {type(v).__name__} as values or source; pass a float tensor, a dict "
                             "of tensors, an ActivationCache, or source prompt(s) / token ids.")

    def bind(self, model: HookedModel) -> None:
        if self._pairs is not None:  # validate the pairs before their layers are resolved as site names
            bind_heads(model, [], None, self._pairs)
        sites = self.sites(model)
        if any(s.kind in ATTENTION_MAP_SITES for s in sites):
            raise InputError("Patch does not write attn_scores or attn_pattern (their key axis has no token "
                             "coordinates shared across prompts); use Edit for attention maps, or "
                             "lmscope.probes.patching.patching_sweep over 'attn_pattern.L' for prompt pairs.")
        self._bind_selection(model, sites)
        if self.source is not None:
            from .cache import Cache

            cache = Cache([s.name for s in sites])
            result = model.run(self.source, [cache])
            self._values = {s: to_token_coordinates(result.cache[s.name], result.batch.attention_mask) for s in sites}
        elif self._given is not None:
            self._values = {s: self._given for s in sites}
        else:
            resolved = {model.resolve(k)[0]: t for k, t in self._by_name.items()}
            missing = [s.name for s in sites if s not in resolved]
            if missing:
                raise InputError(f"Patch values are missing for {', '.join(missing)}; "
                                 f"given: {', '.join(sorted(self._by_name))}.")
            self._values = {s: resolved[s] for s in sites}
        for s in sites:
            want = model.site_shape(s)
            got = tuple(self._values[s].shape[-len(want):])
            if got != want:
                raise InputError(f"Patch values for {s.name} end in shape {got}; the site needs {want}.")

    def _source_index(self, ctx: ForwardContext, rows: torch.Tensor, t: torch.Tensor, n_src: int) -> torch.Tensor:
        if self.source_positions is None:
            return t
        targets = token_indices(self.positions, ctx)
        assert targets is not None
        per_row = isinstance(self.source_positions, list) and any(
            isinstance(s, (list, slice)) for s in self.source_positions)
        s_out = torch.empty_like(t)
        for i in range(ctx.batch_size):
            spec = self.source_positions[i] if per_row else self.source_positions  # type: ignore[index]
            src = _row_indices(spec, n_src, i)
            if len(src) != len(targets[i]):
                raise InputError(f"Row {i}: positions select {len(targets[i])} tokens but source_positions "
                                 f"select {len(src)}; they must pair one to one.")
            lookup = dict(zip(targets[i], src))
            sel = rows == i
            s_out[sel] = torch.tensor([lookup[int(x)] for x in t[sel]], dtype=t.dtype, device=t.device)
        return s_out

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        vals = self._values[site]
        if vals.dim() == value.dim() - 1:
            vals = vals.unsqueeze(0)
        if vals.shape[0] not in (1, value.shape[0]):
            raise InputError(f"Patch values for {site.name} have {vals.shape[0]} rows but the batch has "
                             f"{value.shape[0]}; give one row or one per prompt.")
        mask = position_mask(self.positions, ctx)
        rows, cols = mask.nonzero(as_tuple=True)
        if rows.numel() == 0:
            return value
        t = ctx.token_index[rows, cols]
        s = self._source_index(ctx, rows, t, vals.shape[1])
        if int(s.max()) >= vals.shape[1]:
            raise InputError(f"Patch at {site.name} needs source token {int(s.max())}, but the source has only "
                             f"{vals.shape[1]} tokens; restrict positions or give longer values.")
        vrow = rows if vals.shape[0] > 1 else torch.zeros_like(rows)
        out = value.clone()
        picked = vals.to(device=value.device, dtype=value.dtype)[vrow.to(vals.device), s.to(vals.device)]
        sel = None if self._selection is None else self._selection.get(site)
        if sel is None:
            out[rows, cols] = picked
        else:  # only the chosen heads / neurons (axis 2); the others keep this run's values
            h = torch.tensor(sel.index, device=value.device)
            out[rows[:, None], cols[:, None], h[None, :]] = picked[:, h]
        return out

    def config(self) -> dict[str, Any]:
        src = self.source.tolist() if isinstance(self.source, torch.Tensor) else self.source
        return {**super().config(), "site": None if self._pairs is not None else self.site_spec,
                "source": src, "source_is_ids": isinstance(self.source, torch.Tensor),
                "source_positions": encode_positions(self.source_positions),
                "value_sites": sorted(self._by_name) if self._by_name else None, **self._selection_config()}

    def tensors(self) -> dict[str, torch.Tensor]:
        if self._given is not None:
            return {"values": self._given}
        return {f"values.{k}": v for k, v in self._by_name.items()}

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Patch:
        pos, spos = decode_positions(config.get("positions")), decode_positions(config.get("source_positions"))
        sel = {"heads": decode_heads(config.get("heads")), "neurons": config.get("neurons")}
        if config.get("source") is not None:
            src = torch.tensor(config["source"]) if config.get("source_is_ids") else config["source"]
            return cls(config["site"], src, pos, spos, **sel)
        if "values" in tensors:
            return cls(config["site"], tensors["values"], pos, spos, **sel)
        return cls(config["site"], {k.removeprefix("values."): v for k, v in tensors.items()}, pos, spos, **sel)
