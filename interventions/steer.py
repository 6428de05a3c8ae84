"""``Steer``: add a vector to a site at chosen positions (activation addition)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from .base import Intervention, decode_positions
from .errors import InputError
from .positions import ForwardContext, PositionSpec, position_mask
from .sites import ATTENTION_MAP_SITES, Site

if TYPE_CHECKING:
    from .model import HookedModel


class Steer(Intervention):
    """``value += scale * vector`` at the selected positions of every site in ``site``.

    ``vector`` must match the site's trailing shape: ``[d_model]`` for residual
    and block-output sites, ``[n_heads, d_head]`` for ``head_z``. ``normalize``
    scales the vector to unit norm first. Padding is never steered.
    """

    def __init__(self, site: str | list[str], vector: torch.Tensor, scale: float = 1.0,
                 positions: PositionSpec = None, normalize: bool = False) -> None:
        super().__init__(site, positions)
        if not isinstance(vector, torch.Tensor):
            vector = torch.as_tensor(vector)
        if vector.numel() == 0:
            raise InputError("Steer vector is empty.")
        if not vector.is_floating_point():
            vector = vector.float()
        bad = int((~torch.isfinite(vector)).sum())
        if bad:
            raise InputError(f"Steer vector has {bad} NaN or infinite entries (of {vector.numel()}); every logit "
                             "would become NaN. Pass a finite vector.")
        if not isinstance(scale, (int, float)) or not math.isfinite(float(scale)):
            raise InputError(f"Steer scale must be a finite number, got {scale!r}.")
        if normalize:
            norm = vector.norm()
            if norm == 0:
                raise InputError("Cannot normalise a zero steering vector.")
            vector = vector / norm
        self.vector = vector.detach()
        self.scale = float(scale)
        self.normalize = normalize
        self._cast: torch.Tensor | None = None

    def bind(self, model: HookedModel) -> None:
        for site in self.sites(model):
            want = model.site_shape(site)
            if site.kind in ATTENTION_MAP_SITES:
                raise InputError(f"Steer cannot add a vector to {site.kind}; use Edit.")
            if tuple(self.vector.shape) != want:
                raise InputError(f"Steer vector has shape {tuple(self.vector.shape)} but {site.name} needs {want} "
                                 f"(d_model={model.d_model}, n_heads={model.n_heads}, d_head={model.d_head}).")

    def start(self) -> None:
        self._cast = None

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        if self._cast is None or self._cast.device != value.device or self._cast.dtype != value.dtype:
            self._cast = (self.scale * self.vector).to(device=value.device, dtype=value.dtype)
        if self.positions is None and ctx.all_real:
            return value + self._cast
        mask = position_mask(self.positions, ctx).to(device=value.device, dtype=value.dtype)
        mask = mask.reshape(*mask.shape, *([1] * (value.dim() - 2)))
        return value + mask * self._cast

    def config(self) -> dict[str, Any]:
        return {**super().config(), "scale": self.scale, "normalize": self.normalize}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"vector": self.vector}

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Steer:
        # the stored vector is already normalised: do not normalise twice
        obj = cls(config["site"], tensors["vector"], config["scale"], decode_positions(config.get("positions")))
        obj.normalize = config.get("normalize", False)
        return obj
