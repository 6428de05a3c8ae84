"""``Edit``: apply any function to a site's value (the escape hatch)."""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from .base import Intervention, decode_positions
from .errors import InputError
from .positions import ForwardContext, PositionSpec, position_mask
from .sites import ATTENTION_MAP_SITES, Site


class Edit(Intervention):
    """Replace a site's value by ``fn(value)`` (same shape) at the selected positions.

    ``fn`` may also take the :class:`ForwardContext` as a second argument
    (``with_context=True``). Only module-level functions serialise (by import
    path); lambdas and closures work but cannot be saved.
    """

    def __init__(self, site: str | list[str], fn: Callable[..., torch.Tensor], positions: PositionSpec = None,
                 with_context: bool = False) -> None:
        super().__init__(site, positions)
        if not callable(fn):
            raise InputError(f"Edit needs a callable, got {type(fn).__name__}.")
        self.fn, self.with_context = fn, with_context

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor | None:
        new = self.fn(value, ctx) if self.with_context else self.fn(value)
        if new is None:
            return None
        if new.shape != value.shape:
            raise InputError(f"Edit function returned shape {tuple(new.shape)} for {site.name}, "
                             f"which has shape {tuple(value.shape)}.")
        if self.positions is None:
            return new
        if site.kind in ATTENTION_MAP_SITES:
            raise InputError(f"Edit with positions is not supported on {site.kind}; select queries inside fn.")
        mask = position_mask(self.positions, ctx).reshape(*value.shape[:2], *([1] * (value.dim() - 2)))
        return torch.where(mask, new, value)

    def config(self) -> dict[str, Any]:
        name = getattr(self.fn, "__qualname__", "")
        module = getattr(self.fn, "__module__", None)
        if not module or "<" in name:
            raise InputError(f"Edit function {self.fn!r} cannot be serialised: only module-level functions "
                             "(saved by import path) can; wrap the logic in a named function in a module.")
        return {**super().config(), "fn": f"{module}:{name}", "with_context": self.with_context}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Edit):
            return NotImplemented
        return (self.fn is other.fn and self.site_spec == other.site_spec and self.positions == other.positions
                and self.with_context == other.with_context)

    __hash__ = object.__hash__

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Edit:
        module, _, qualname = config["fn"].partition(":")
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return cls(config["site"], obj, decode_positions(config.get("positions")), config.get("with_context", False))
