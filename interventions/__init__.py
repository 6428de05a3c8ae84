"""lmscope interventions: the hooked model and the intervention objects that act on it.

Where things live: ``model.py`` holds :class:`HookedModel`; ``sites.py`` parses site names,
``architectures.py`` maps them to HF modules (one declarative adapter per architecture) and
``locations.py`` says where each kind sits inside them; ``base.py`` defines the Intervention protocol,
with one module per intervention kind (``cache.py``, ``steer.py``, ``patch.py``, ``ablate.py``, ``edit.py``);
``heads.py`` and ``selection.py`` hold their ``heads=``/``neurons=`` selections, ``tl_names.py`` TransformerLens
naming (``get_act_name``, ``names_filter``);
``backends/`` attaches them to a forward (``backends/hooks.py`` with PyTorch hooks, always removed;
``backends/nnsight.py`` inside an nnsight trace). ``collect.py`` and ``datasets.py`` read activations in
batches, ``partial.py`` runs partial forwards (``kv.py`` knows transformers' key/value caches),
``artifacts.py`` writes files atomically and ``errors.py`` holds the core's error classes. Steering vectors are built in
:mod:`lmscope.probes.steering` (``probes/steering/vectors.py``), which uses this package.

Names are imported lazily (PEP 562) so that command-line tools can import a submodule such as
``lmscope.interventions.cli`` without loading torch and transformers first;
``from lmscope.interventions import HookedModel`` works as usual.
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
    from .tl_names import get_act_name

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
    "get_act_name": ".tl_names",
}
__all__ = [
    "ARCHITECTURES", "Ablate", "ActivationCache", "Architecture", "Batch", "Cache", "Edit", "ForwardContext",
    "Generation", "HookedModel", "InputError", "Intervention", "LibraryVersionError", "LmscopeError",
    "ModelMismatchError", "Patch",
    "RunResult", "Site", "SiteError", "Steer", "UnsupportedArchitectureError", "collect_activations",
    "load_interventions", "parse_layers", "register_architecture", "resolve_layers", "save_interventions",
    "supported_model_types", "ActivationDataset", "write_dataset", "Interventions", "as_interventions",
    "get_act_name",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
