"""Steering in the workbench: a saved vector at a chosen layer and scale, in units of the typical residual norm.

A steering name (``--steer NAME=FOLDER`` or a folder under ``--root``) holds either saved interventions (one
``Steer`` to move and rescale; a set of several applies as saved, scaled, at its own layers) or a
``SteeringVector`` folder (``steering.json``, as ``lmscope steer`` writes), which is turned into ``Steer``\\ s by its
own ``to_steer`` exactly as the CLI does. With ``unit="resid"`` a scale counts the layer's typical residual norm
along the vector's direction (:mod:`lmscope.probes.steering.scale`): the vector's own measured norms when it
has them, else the norm measured once per site on :data:`REFERENCE_TEXTS` (outlier tokens left out; a model
without a tokenizer uses seeded random token ids), cached for the server's life.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions import Intervention, Steer
from lmscope.interventions.errors import InputError

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel

    from .schema import SteerAt

#: Ordinary English the typical residual norm is measured on (for vectors that did not measure their own).
REFERENCE_TEXTS = (
    "The weather was mild for the time of year, and the market was busy by nine.",
    "She closed the book, looked out of the window and tried to remember the name.",
    "A function returns a value to the code that called it, unless it raises an error.",
    "The committee will meet again on Thursday to review the budget for the new school.",
    "He walked along the river until the path turned towards the old stone bridge.",
    "Water boils at a lower temperature at high altitude because the air pressure is lower.",
    "Please send the signed form back to the office before the end of the month.",
    "The orchestra played the second movement slowly, and the hall fell silent.",
)


class NormTable:
    """Typical residual norms of ``model`` by site, measured once each on the reference prompts (thread-safe)."""

    def __init__(self, model: HookedModel) -> None:
        self.model = model
        self._norms: dict[str, float] = {}
        self._lock = threading.Lock()

    def prompts(self) -> list[Any]:
        if self.model.tokenizer is not None:
            return list(REFERENCE_TEXTS)
        gen = torch.Generator().manual_seed(0)
        return torch.randint(1, self.model.d_vocab, (len(REFERENCE_TEXTS), 16), generator=gen).tolist()

    def norm(self, site: str) -> float:
        """The typical norm at ``site`` (measured outside any session: call it before opening one)."""
        from lmscope.probes.steering.scale import typical_norms

        with self._lock:
            if site not in self._norms:
                norms, _ = typical_norms(self.model, self.prompts(), [site])
                self._norms[site] = float(norms[site])
            return self._norms[site]


def is_vector_folder(folder: Path) -> bool:
    return (folder / "steering.json").is_file()


def vector_steers(sv: Any, at: SteerAt, norms: NormTable) -> list[Intervention]:
    """A ``SteeringVector``'s ``Steer``\\ s for ``at`` (its own ``to_steer``; unmeasured norms from ``norms``)."""
    layers = None if at.layer is None else [at.layer]
    if at.unit == "resid":  # a copy: the loaded vector is shared by every request
        measured = {site: norms.norm(site) for site in sv.sites_of(layers) if site not in sv.resid_norms}
        sv = replace(sv, resid_norms={**sv.resid_norms, **measured})
    return list(sv.to_steer(at.scale, layers=layers, unit=at.unit))


def _moved_site(steer: Steer, layer: int | None, model: HookedModel) -> str:
    site = steer.site_spec
    if not isinstance(site, str) or len(model.resolve(site)) != 1:
        raise InputError(f"The saved Steer acts at {site!r}; a workbench steering needs one site to move.")
    resolved = model.resolve(site)[0]
    if layer is None:
        return resolved.name
    n = model.n_layers
    if isinstance(layer, bool) or not -n <= layer < n:
        raise InputError(f"Steering layer {layer} is out of range: this model has {n} layers (0..{n - 1}).")
    return f"{resolved.kind}.{layer % n}"


def set_steers(saved: list[Intervention], at: SteerAt, model: HookedModel, norms: NormTable) -> list[Intervention]:
    """Fresh ``Steer``\\ s for ``at`` from a saved intervention set (see the module docstring)."""
    if at.layer is None and at.unit == "raw":  # as saved, every Steer's scale times at.scale
        out: list[Intervention] = []
        for iv in saved:
            if not isinstance(iv, Steer):
                raise InputError(f"Steering {at.name!r} holds a {type(iv).__name__}; the workbench steers with "
                                 "Steer interventions only.")
            out.append(Steer(iv.site_spec, iv.vector, iv.scale * at.scale, iv.positions, normalize=iv.normalize))
        return out
    if len(saved) != 1 or not isinstance(saved[0], Steer) or saved[0].vector.dim() != 1:
        raise InputError(f"Steering {at.name!r} holds {len(saved)} interventions; moving it to a layer or scaling it "
                         "in residual norms needs exactly one Steer with one vector (use unit 'raw' and no layer "
                         "to apply the set as saved).")
    steer = saved[0]
    site = _moved_site(steer, at.layer, model)
    vector = steer.vector.float()
    if at.unit == "raw":
        return [Steer(site, vector, steer.scale * at.scale, steer.positions, normalize=steer.normalize)]
    size = float(vector.norm())
    if size == 0:
        raise InputError(f"Steering {at.name!r} is a zero vector; it has no direction to steer along.")
    return [Steer(site, vector / size * norms.norm(site), at.scale, steer.positions)]


def describe(at: SteerAt, steers: list[Intervention]) -> str:
    sites = sorted({s for iv in steers for s in ([iv.site_spec] if isinstance(iv.site_spec, str) else iv.site_spec)})
    unit = "x typical residual norm" if at.unit == "resid" else "x saved vector"
    return f"steer {at.name} at {', '.join(sites)}: {at.scale:g} {unit}"
