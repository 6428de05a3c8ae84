"""lmscope interventions: the hooked model and the intervention objects that act on it.

Where things live: ``sites.py`` parses site names, ``architectures.py`` maps
them to HF modules (one entry per architecture), ``hooks.py`` attaches and
always removes hooks, ``base.py`` defines the Intervention protocol, and one
module per intervention kind (``cache``, ``steer``, ``patch``, ``ablate``, ``edit``).
"""

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

__all__ = [
    "ARCHITECTURES", "Ablate", "ActivationCache", "Architecture", "Batch", "Cache", "Edit", "ForwardContext",
    "Generation", "HookedModel", "InputError", "Intervention", "LmscopeError", "ModelMismatchError", "Patch",
    "RunResult", "Site", "SiteError", "Steer", "UnsupportedArchitectureError", "load_interventions",
    "register_architecture", "save_interventions", "supported_model_types",
]

from .steering import SteeringVector  # noqa: E402

__all__ += ["SteeringVector"]
