"""Big-model placement with accelerate: ``device_map``, ``max_memory`` and disk/CPU offload.

``HookedModel.from_pretrained(..., device_map="auto" | {...}, offload_folder=..., max_memory=...)`` hands these
to transformers, which places each module with accelerate (its ``AlignDevicesHook`` moves offloaded weights in
for the module's forward and out again). lmscope's hooks are ordinary forward (pre-)hooks on the same modules,
so they run around that, on the module's execution device; intervention tensors are moved to the device of the
value they act on. Inputs go to the device of the embedding module.

A module whose weights sit on the ``meta`` device *without* an accelerate hook cannot run at all; wrapping such a
model raises :class:`PlacementError` naming the module, before any forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import InputError

#: ``from_pretrained`` keyword arguments that choose where weights live (passed through to transformers).
PLACEMENT_KWARGS = ("device_map", "offload_folder", "max_memory", "offload_state_dict", "offload_buffers")


class PlacementError(InputError):
    """A ``device_map`` that leaves a module unable to run (weights on ``meta`` with no offload hook)."""


def split_placement(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove and return the placement keyword arguments of ``kwargs`` (those that are not None)."""
    return {k: kwargs.pop(k) for k in PLACEMENT_KWARGS if k in kwargs and kwargs[k] is not None}


def _managed(root: nn.Module) -> set[int]:
    """Ids of every module whose weights accelerate manages (a hook on it or on one of its ancestors)."""
    out: set[int] = set()
    for module in root.modules():
        if getattr(module, "_hf_hook", None) is not None:
            out.update(id(m) for m in module.modules())
    return out


def check_placement(hf_model: nn.Module, paths: dict[str, nn.Module]) -> None:
    """Refuse a model whose hooked modules hold ``meta`` weights that nothing will load.

    ``paths`` maps a readable name (the adapter path) to each module lmscope hooks or decodes through.
    """
    managed: set[int] | None = None
    for name, module in paths.items():
        meta = [n for n, p in module.named_parameters() if p.device.type == "meta"]
        if not meta:
            continue
        managed = _managed(hf_model) if managed is None else managed
        if any(id(m) not in managed for m in module.modules() if any(True for _ in m.parameters(recurse=False))):
            raise PlacementError(
                f"{name} has weights on the meta device ({meta[0]}{' ...' if len(meta) > 1 else ''}) and no "
                "accelerate offload hook, so it cannot run. Give it a real device in device_map (a GPU index, "
                "'cpu', or 'disk' with offload_folder=...), or load without device_map.")


def input_device(hf_model: nn.Module, embed: nn.Module) -> torch.device:
    """Where inputs must go: the execution device of the embedding module."""
    hook = getattr(embed, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(execution if not isinstance(execution, int) else f"cuda:{execution}")
    for p in embed.parameters():
        if p.device.type != "meta":
            return p.device
    for p in hf_model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")
