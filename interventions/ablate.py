"""``Ablate``: knock out heads, neurons or whole activations by zeroing, mean-replacing or resampling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .base import Intervention, decode_positions
from .errors import InputError
from .heads import HeadSpec, bind_heads, decode_heads
from .positions import ForwardContext, PositionSpec, position_mask
from .selection import NeuronSpec, Selects
from .sites import ATTENTION_MAP_SITES, Site

if TYPE_CHECKING:
    from .model import HookedModel

HOW = ("zero", "mean", "resample")


class Ablate(Selects, Intervention):
    """Ablate ``site`` (all of it, or only some heads or neurons) at ``positions``.

    ``heads``: head indices of the named per-head site(s) (``Ablate("head_z.3", heads=[1, 2])``; also ``q``,
    ``k``, ``v``, ``rot_q``, ``rot_k``, ``head_out``, where on ``k``/``v``/``rot_k`` they count KV heads and
    ``query_heads(site)`` lists the query heads that reads), or (layer, head) pairs across layers without a
    site (``Ablate(heads=[(3, 1), (5, 0)])``); see :mod:`lmscope.interventions.selection`.
    ``neurons``: MLP neurons of ``mlp_pre``/``mlp_post`` site(s) (``Ablate("mlp_post.12", neurons=[1042])``).

    ``how``:
    - ``"zero"``: set to zero;
    - ``"mean"``: set to the mean over the real tokens of ``reference`` prompts
      (one run at bind time), or without a reference over the real tokens of the
      current forward. With ``per_position=True`` the mean is taken per token index
      instead: token ``t`` gets the mean over the prompts (reference or batch) that
      have a token ``t``;
    - ``"resample"``: set to the value of another prompt at the same token index:
      a seeded random ``reference`` prompt, or without one the next prompt of the
      batch (row ``i`` takes row ``i+1``, cyclically; needs a batch of two or more).
    """

    def __init__(self, site: str | list[str] | None = None, heads: HeadSpec = None, how: str = "zero",
                 positions: PositionSpec = None, reference: str | list[str] | None = None, seed: int = 0,
                 per_position: bool = False, *, neurons: NeuronSpec = None) -> None:
        super().__init__(self._parse_selection(site, heads, neurons, "Ablate"), positions)
        if how not in HOW:
            raise InputError(f"Ablate how={how!r} is not one of {', '.join(map(repr, HOW))}.")
        if how == "zero" and reference is not None:
            raise InputError("A reference is only used by how='mean' or how='resample'.")
        if not isinstance(per_position, bool) or per_position and how != "mean":
            raise InputError(f"per_position=True is an option of how='mean' (got how={how!r}, "
                             f"per_position={per_position!r}).")
        self.how, self.reference, self.seed, self.per_position = how, reference, seed, per_position
        self._ref: dict[Site, torch.Tensor] = {}
        self._ref_len: torch.Tensor | None = None
        self._pick: torch.Tensor | None = None

    def bind(self, model: HookedModel) -> None:
        if self._pairs is not None:  # validate the pairs before their layers are resolved as site names
            bind_heads(model, [], None, self._pairs)
        sites = self.sites(model)
        for s in sites:
            if s.kind in ATTENTION_MAP_SITES:
                raise InputError(f"Ablate does not act on {s.kind}: a mean or resampled attention row would put "
                                 "weight on other (or future) keys. Ablate heads at 'head_z.L' (or 'v.L'), or set "
                                 "a pattern yourself with Edit.")
        self._bind_selection(model, sites)
        self._ref, self._ref_len = {}, None
        if self.reference is not None:
            from .cache import Cache
            from .patch import to_token_coordinates

            result = model.run(self.reference, [Cache([s.name for s in sites])])
            mask = result.batch.attention_mask
            for s in sites:
                v = result.cache[s.name]
                if self.how == "mean" and self.per_position:  # [tokens, ...]: mean over the prompts long enough
                    tokens = to_token_coordinates(v, mask)
                    count = (mask.sum(1)[:, None] > torch.arange(tokens.shape[1], device=mask.device)).sum(0)
                    self._ref[s] = tokens.sum(0) / count.to(tokens).reshape(-1, *([1] * (tokens.dim() - 2)))
                elif self.how == "mean":
                    keep = mask.bool().to(v.device)
                    self._ref[s] = v[keep].mean(0)
                else:
                    self._ref[s] = to_token_coordinates(v, mask)
            self._ref_len = mask.sum(1)

    def start(self) -> None:
        self._pick = None

    def _replacement(self, value: torch.Tensor, site: Site, ctx: ForwardContext, mask: torch.Tensor) -> torch.Tensor:
        if self.how == "zero":
            return torch.zeros_like(value)
        if self.how == "mean" and self.per_position:
            return self._position_mean(value, site, ctx, mask)
        if self.how == "mean":
            if site in self._ref:
                return self._ref[site].to(value).expand_as(value)
            real = ctx.real.to(value.device)
            return value[real].mean(0).expand_as(value)
        if site not in self._ref:  # resample from the batch itself
            if value.shape[0] < 2:
                raise InputError("Ablate(how='resample') without a reference needs a batch of at least two prompts.")
            idx = torch.arange(value.shape[0], device=value.device).roll(-1)
            tok = ctx.token_index.clamp(min=0)  # same token index, read in the other row's columns
            shifted = ctx.pad_left[idx][:, None] + tok - ctx.offset
            shifted = shifted.clamp(0, value.shape[1] - 1)
            return value[idx[:, None], shifted]
        ref = self._ref[site]
        if self._pick is None or self._pick.shape[0] != value.shape[0]:
            gen = torch.Generator().manual_seed(self.seed)
            self._pick = torch.randint(ref.shape[0], (value.shape[0],), generator=gen)
        pick = self._pick
        assert self._ref_len is not None
        tok = ctx.token_index.clamp(min=0).to(ref.device)
        pick = pick.to(ref.device)
        last = (self._ref_len.to(ref.device)[pick] - 1)[:, None]
        return ref[pick[:, None], torch.minimum(tok, last)].to(value)

    def _position_mean(self, value: torch.Tensor, site: Site, ctx: ForwardContext,
                       mask: torch.Tensor) -> torch.Tensor:
        """Token ``t`` of every row gets the mean at token ``t`` (over the reference, or the batch's real rows)."""
        tok = ctx.token_index.to(value.device)
        needed = tok[mask & ctx.real.to(value.device)]
        if site in self._ref:
            means = self._ref[site].to(value)
            where = "the reference prompts"
        else:
            real = ctx.real.to(value.device)
            size = int(tok[real].max()) + 1 if bool(real.any()) else 1
            sums = value.new_zeros(size, *value.shape[2:]).index_add_(0, tok[real], value[real])
            count = torch.bincount(tok[real], minlength=size).clamp(min=1).to(value)
            means = sums / count.reshape(-1, *([1] * (value.dim() - 2)))
            where = "this forward"
        if needed.numel() and int(needed.max()) >= means.shape[0]:
            raise InputError(f"Ablate(how='mean', per_position=True) at {site.name} needs the mean at token "
                             f"{int(needed.max())}, but {where} reach only token {means.shape[0] - 1}; give longer "
                             "reference prompts or restrict positions.")
        return means[tok.clamp(0, means.shape[0] - 1)]

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        mask = position_mask(self.positions, ctx).to(value.device)
        repl = self._replacement(value, site, ctx, mask)
        mask = mask.reshape(*mask.shape, *([1] * (value.dim() - 2)))
        sel = None if self._selection is None else self._selection.get(site)
        if sel is not None:
            mask = mask & sel.mask(value)
        return torch.where(mask, repl, value)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "site": None if self._pairs is not None else self.site_spec,
                **self._selection_config(), "how": self.how, "reference": self.reference,
                "seed": self.seed, "per_position": self.per_position}

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Ablate:
        return cls(config["site"], decode_heads(config.get("heads")), config.get("how", "zero"),
                   decode_positions(config.get("positions")), config.get("reference"), config.get("seed", 0),
                   config.get("per_position", False), neurons=config.get("neurons"))
