"""lmscope: activation analysis for pretrained language models.

The installed package is laid out in three layers (the repository keeps them as top-level folders):

- :mod:`lmscope.interventions` -- the core: ``HookedModel``, site names, architectures, the intervention
  kinds (``Cache``, ``Steer``, ``Patch``, ``Ablate``, ``Edit``), backends, batched collection, the CLI dispatcher;
- :mod:`lmscope.lens` -- logit and tuned lenses: decoding, trajectories, plots, readouts, training;
- :mod:`lmscope.probes` -- one subpackage per research method (``steering`` ...).

``import lmscope`` is cheap: the names below load on first use (PEP 562), so ``from lmscope import
HookedModel`` works as usual while command-line tools start without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .interventions import (
        Ablate,
        ActivationCache,
        Cache,
        Edit,
        HookedModel,
        InputError,
        Intervention,
        LmscopeError,
        ModelMismatchError,
        Patch,
        SiteError,
        Steer,
        UnsupportedArchitectureError,
        load_interventions,
        register_architecture,
        save_interventions,
    )
    from .lens import LensReadout, LogitLens, Trajectory, TunedLens
    from .lens.training import default_lens, evaluate_lens, train_tuned_lens
    from .probes.steering import SteeringVector

__version__ = "0.1.0"

_LAZY = {
    **dict.fromkeys(("Ablate", "ActivationCache", "Cache", "Edit", "HookedModel", "InputError", "Intervention",
                     "LmscopeError", "ModelMismatchError", "Patch", "SiteError", "Steer",
                     "UnsupportedArchitectureError", "load_interventions", "register_architecture",
                     "save_interventions"), "lmscope.interventions"),
    **dict.fromkeys(("LensReadout", "LogitLens", "Trajectory", "TunedLens"), "lmscope.lens"),
    **dict.fromkeys(("default_lens", "evaluate_lens", "train_tuned_lens"), "lmscope.lens.training"),
    "SteeringVector": "lmscope.probes.steering",
}
__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
