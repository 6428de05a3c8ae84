"""lmscope interventions: the hooked model and the intervention objects that act on it.

Where things live: ``sites.py`` parses site names, ``architectures.py`` maps
them to HF modules (one entry per architecture), ``hooks.py`` attaches and
always removes hooks, ``base.py`` defines the Intervention protocol, and one
module per intervention kind (``cache``, ``steer``, ``patch``, ``ablate``, ``edit``);
``steering.py`` builds steering vectors from contrast pairs.

Names are imported lazily (PEP 562) so that command-line tools can import a
submodule such as ``lmscope.interventions.steering_cli`` without loading torch and
transformers first; ``from lmscope.interventions import HookedModel`` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

if TYPE_CHECKING:
    from .ablate import Ablate
    from .architectures import ARCHITECTURES, Architecture, register_architecture, supported_model_types
    from .base import Intervention, Interventions, as_interventions, load_interventions, save_interventions
    from .cache import ActivationCache, Cache
    from .collect import collect_activations
    from .datasets import ActivationDataset, write_dataset
    from .edit import Edit
    from .errors import (
        InputError,
        LibraryVersionError,
        LmscopeError,
        ModelMismatchError,
        SiteError,
        UnsupportedArchitectureError,
    )
    from .inputs import Batch
    from .model import Generation, HookedModel, RunResult
    from .patch import Patch
    from .positions import ForwardContext
    from .sites import Site
    from .specs import parse_layers, resolve_layers
    from .steer import Steer

_LAZY = {
    "Ablate": ".ablate", "ARCHITECTURES": ".architectures", "Architecture": ".architectures",
    "register_architecture": ".architectures", "supported_model_types": ".architectures",
    "Intervention": ".base", "Interventions": ".base", "as_interventions": ".base",
    "load_interventions": ".base", "save_interventions": ".base",
    "ActivationCache": ".cache", "Cache": ".cache", "Edit": ".edit",
    "InputError": ".errors", "LmscopeError": ".errors", "ModelMismatchError": ".errors", "SiteError": ".errors",
    "UnsupportedArchitectureError": ".errors", "LibraryVersionError": ".errors", "Batch": ".inputs",
    "Generation": ".model", "HookedModel": ".model", "RunResult": ".model", "Patch": ".patch",
    "ForwardContext": ".positions", "Site": ".sites", "Steer": ".steer",
    "collect_activations": ".collect", "ActivationDataset": ".datasets",
    "write_dataset": ".datasets", "parse_layers": ".specs", "resolve_layers": ".specs",
}
__all__ = [
    "ARCHITECTURES", "Ablate", "ActivationCache", "Architecture", "Batch", "Cache", "Edit", "ForwardContext",
    "Generation", "HookedModel", "InputError", "Intervention", "LibraryVersionError", "LmscopeError",
    "ModelMismatchError", "Patch",
    "RunResult", "Site", "SiteError", "Steer", "UnsupportedArchitectureError", "collect_activations",
    "load_interventions", "parse_layers", "register_architecture", "resolve_layers", "save_interventions",
    "supported_model_types", "ActivationDataset", "write_dataset", "Interventions", "as_interventions",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
