"""``Ablate``: knock out heads or whole activations by zeroing, mean-replacing or resampling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .base import Intervention, decode_positions
from .errors import InputError
from .positions import ForwardContext, PositionSpec, position_mask
from .sites import ATTENTION_MAP_SITES, Site

if TYPE_CHECKING:
    from .model import HookedModel

HOW = ("zero", "mean", "resample")


class Ablate(Intervention):
    """Ablate ``site`` (all of it, or only ``heads`` of a ``head_z`` site) at ``positions``.

    ``how``:
    - ``"zero"``: set to zero;
    - ``"mean"``: set to the mean over the real tokens of ``reference`` prompts
      (one run at bind time), or without a reference over the real tokens of the
      current forward;
    - ``"resample"``: set to the value of another prompt at the same token index:
      a seeded random ``reference`` prompt, or without one the next prompt of the
      batch (row ``i`` takes row ``i+1``, cyclically; needs a batch of two or more).
    """

    def __init__(self, site: str | list[str], heads: int | list[int] | None = None, how: str = "zero",
                 positions: PositionSpec = None, reference: str | list[str] | None = None, seed: int = 0) -> None:
        super().__init__(site, positions)
        if how not in HOW:
            raise InputError(f"Ablate how={how!r} is not one of {', '.join(map(repr, HOW))}.")
        head_list = [heads] if isinstance(heads, int) else heads
        if isinstance(heads, bool) or head_list is not None and (
                not head_list or not all(isinstance(h, int) for h in head_list)):
            raise InputError(f"heads must be an int or a non-empty list of ints, got {heads!r}.")
        if how == "zero" and reference is not None:
            raise InputError("A reference is only used by how='mean' or how='resample'.")
        self.heads, self.how, self.reference, self.seed = head_list, how, reference, seed
        self._ref: dict[Site, torch.Tensor] = {}
        self._ref_len: torch.Tensor | None = None
        self._pick: torch.Tensor | None = None

    def bind(self, model: HookedModel) -> None:
        sites = self.sites(model)
        for s in sites:
            if s.kind in ATTENTION_MAP_SITES:
                raise InputError(f"Ablate does not act on {s.kind}; ablate heads at 'head_z.L'.")
            if self.heads is not None:
                if s.kind != "head_z":
                    raise InputError(f"heads= selects heads of a 'head_z.L' site, not of {s.name}.")
                bad = [h for h in self.heads if not -model.n_heads <= h < model.n_heads]
                if bad:
                    raise InputError(f"Head index {bad[0]} out of range: this model has {model.n_heads} heads "
                                     f"per layer (valid 0..{model.n_heads - 1}).")
        self._heads_idx = None if self.heads is None else [h % model.n_heads for h in self.heads]
        self._ref, self._ref_len = {}, None
        if self.reference is not None:
            from .cache import Cache
            from .patch import to_token_coordinates

            result = model.run(self.reference, [Cache([s.name for s in sites])])
            mask = result.batch.attention_mask
            for s in sites:
                v = result.cache[s.name]
                if self.how == "mean":
                    keep = mask.bool().to(v.device)
                    self._ref[s] = v[keep].mean(0)
                else:
                    self._ref[s] = to_token_coordinates(v, mask)
            self._ref_len = mask.sum(1)

    def start(self) -> None:
        self._pick = None

    def _replacement(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        if self.how == "zero":
            return torch.zeros_like(value)
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

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        repl = self._replacement(value, site, ctx)
        mask = position_mask(self.positions, ctx).to(value.device)
        mask = mask.reshape(*mask.shape, *([1] * (value.dim() - 2)))
        if self._heads_idx is not None:
            head_mask = torch.zeros(value.shape[2], dtype=torch.bool, device=value.device)
            head_mask[self._heads_idx] = True
            mask = mask & head_mask[None, None, :, None]
        return torch.where(mask, repl, value)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "heads": self.heads, "how": self.how, "reference": self.reference,
                "seed": self.seed}

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Ablate:
        return cls(config["site"], config.get("heads"), config.get("how", "zero"),
                   decode_positions(config.get("positions")), config.get("reference"), config.get("seed", 0))
