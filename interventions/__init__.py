"""lmscope interventions: the hooked model and the intervention objects that act on it.

Where things live: ``sites.py`` parses site names, ``architectures.py`` maps
them to HF modules (one entry per architecture), ``hooks.py`` attaches and
always removes hooks, ``base.py`` defines the Intervention protocol, and one
module per intervention kind (``cache``, ``steer``, ``patch``, ``ablate``, ``edit``);
``steering.py`` builds steering vectors from contrast pairs.

Names are imported lazily (PEP 562) so that command-line tools can import a
submodule such as ``interventions.steering_cli`` without loading torch and
transformers first; ``from interventions import HookedModel`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ablate import Ablate
    from .architectures import ARCHITECTURES, Architecture, register_architecture, supported_model_types
    from .base import Intervention, load_interventions, save_interventions
    from .cache import ActivationCache, Cache
    from .edit import Edit
    from .errors import InputError, LmscopeError, ModelMismatchError, SiteError, UnsupportedArchitectureError
    from .inputs import Batch
    from .model import Generation, HookedModel, RunResult
    from .patch import Patch
    from .positions import ForwardContext
    from .sites import Site
    from .steer import Steer
    from .steering import SteeringVector

_LAZY = {
    "Ablate": "ablate", "ARCHITECTURES": "architectures", "Architecture": "architectures",
    "register_architecture": "architectures", "supported_model_types": "architectures",
    "Intervention": "base", "load_interventions": "base", "save_interventions": "base",
    "ActivationCache": "cache", "Cache": "cache", "Edit": "edit",
    "InputError": "errors", "LmscopeError": "errors", "ModelMismatchError": "errors", "SiteError": "errors",
    "UnsupportedArchitectureError": "errors", "Batch": "inputs",
    "Generation": "model", "HookedModel": "model", "RunResult": "model", "Patch": "patch",
    "ForwardContext": "positions", "Site": "sites", "Steer": "steer", "SteeringVector": "steering",
}
__all__ = [
    "ARCHITECTURES", "Ablate", "ActivationCache", "Architecture", "Batch", "Cache", "Edit", "ForwardContext",
    "Generation", "HookedModel", "InputError", "Intervention", "LmscopeError", "ModelMismatchError", "Patch",
    "RunResult", "Site", "SiteError", "Steer", "SteeringVector", "UnsupportedArchitectureError",
    "load_interventions", "register_architecture", "save_interventions", "supported_model_types",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
