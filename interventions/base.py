"""The Intervention protocol: what every intervention object is, how they compose and serialise.

An intervention is a pure function of (site value, forward context): it never
touches modules, so any execution backend that can read and write a site's
tensor can run it (``backends/hooks.py`` is the PyTorch-hooks backend; an nnsight
backend would call the same ``__call__``). Several interventions compose in list
order; on one site they apply in that order, each seeing the previous result.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Union

import torch

from .artifacts import load_artifact, save_artifact
from .errors import ArtifactError, InputError, LmscopeError
from .positions import ForwardContext, PositionSpec, validate_positions
from .sites import Site

if TYPE_CHECKING:
    from .model import HookedModel

class _Registry(dict[str, Any]):
    """Intervention classes by name, for loading saved interventions. Pickles as an empty registry: a remote
    (NDIF) request ships lmscope's code by value, and must not drag along every subclass this process defined
    (a test's or a user's module the server cannot import); loading from disk never happens there."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Registry, ())


_REGISTRY: dict[str, type[Intervention]] = _Registry()


def encode_positions(spec: PositionSpec) -> Any:
    """JSON form of a position spec (slices become ``{"slice": [start, stop, step]}``)."""
    if isinstance(spec, slice):
        return {"slice": [spec.start, spec.stop, spec.step]}
    if isinstance(spec, (list, tuple)):
        return [encode_positions(s) for s in spec]
    return spec


def decode_positions(data: Any) -> PositionSpec:
    if isinstance(data, dict) and "slice" in data:
        return slice(*data["slice"])
    if isinstance(data, list):
        specs: list[Any] = [decode_positions(d) for d in data]
        return specs
    return data


class Intervention:
    """Base class. Subclasses set ``site_spec``/``positions`` and implement ``__call__``.

    Life cycle inside one ``model.run``/``model.apply`` session:
    ``bind(model)`` validates against the model and may run preparatory forwards
    (before any hook exists), ``start()`` resets per-session state, then
    ``__call__(value, site, ctx)`` runs on every forward that reaches a site.
    """

    #: False for interventions that only read (``Cache``, ``LensReadout``): ``__call__`` must return None,
    #: and the backend raises :class:`InputError` if one returns a value (it would silently change the forward).
    writes: ClassVar[bool] = True
    #: Attributes a session fills (those ``start()`` resets): a remote (NDIF) run executes the server's copy of
    #: the intervention, so the nnsight backend brings these back into this object afterwards. A read-only
    #: intervention must list them to run remotely.
    session_fields: ClassVar[tuple[str, ...]] = ()
    #: True for a helper a method builds and runs inside itself (e.g. a batched layout of public interventions
    #: whose config means nothing outside that forward): it is not registered for loading, and saving it is an
    #: :class:`InputError`. Subclasses inherit the flag.
    internal: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super(Intervention, cls).__init_subclass__(**kwargs)  # noqa: UP008 - nnsight rebuilds classes from source
        if not cls.internal:
            _REGISTRY[cls.__name__] = cls

    def __init__(self, site: str | list[str], positions: PositionSpec = None) -> None:
        if isinstance(site, (list, tuple)):
            if not site:
                raise InputError(f"{type(self).__name__} needs at least one site.")
            site = list(site)
        elif not isinstance(site, str):
            raise InputError(f"site must be a name like 'resid_post.3' or a list of names, got {type(site).__name__}.")
        self.site_spec: str | list[str] = site
        self.positions: PositionSpec = validate_positions(positions)

    # -- binding ---------------------------------------------------------------------------------
    def sites(self, model: HookedModel) -> list[Site]:
        """The concrete sites this intervention attaches to on ``model``."""
        return model.resolve(self.site_spec)

    def bind(self, model: HookedModel) -> None:
        """Validate against ``model`` (shapes, head indices...) before any hook is attached."""
        self.sites(model)

    def start(self) -> None:
        """Reset per-session state (called once per run/apply session, after bind)."""

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor | None:
        """Return the new value of ``site`` (same shape), or None to leave it unchanged."""
        raise NotImplementedError

    # -- serialisation ---------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able description (without tensors)."""
        return {"site": self.site_spec, "positions": encode_positions(self.positions)}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Tensors that go to safetensors."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Intervention:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        if self.internal:
            raise InputError(f"{type(self).__name__} is an internal helper intervention (it runs only inside the "
                             "method that builds it) and cannot be saved; save the public interventions it stands "
                             "for instead.")
        return {"type": type(self).__name__, "config": self.config()}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``intervention.json`` + ``tensors.safetensors`` into the folder ``path`` (atomically)."""
        save_artifact(path, self.to_dict(), self.tensors(), config_name="intervention.json")

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Intervention:
        config, tensors = load_artifact(path, config_name="intervention.json")
        return _rebuild(config, tensors, os.path.join(path, "intervention.json"))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Intervention)
        if self.config() != other.config():
            return False
        a, b = self.tensors(), other.tensors()
        return a.keys() == b.keys() and all(
            a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k].cpu(), b[k].cpu()) for k in a)

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if v is not None)
        return f"{type(self).__name__}({cfg})"


def intervention_from_dict(data: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Intervention:
    """Rebuild an intervention from :meth:`Intervention.to_dict` output plus its tensors."""
    name = data.get("type")
    if name not in _REGISTRY:
        raise InputError(f"Unknown intervention type {name!r}; known: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name].from_config(data["config"], tensors)


Interventions = Union["Intervention", Iterable[Any], None]
"""What every entry point that takes interventions accepts: one, a list (nested lists flatten), or None."""


def as_interventions(interventions: Interventions) -> list[Intervention]:
    """One intervention, a (nested) list/tuple/iterable of them, or None, as one flat list in order.

    Every entry point that takes interventions (``run``, ``generate``, ``apply``, the partial forwards, the
    evaluations...) goes through this, so each takes one object or a list alike (``sv.to_steer()`` returns a
    list, which may sit inside another list). Anything else is an :class:`InputError` naming it.
    """
    if interventions is None:
        return []
    if isinstance(interventions, Intervention):
        return [interventions]
    if isinstance(interventions, (str, bytes, dict, torch.Tensor)) or not isinstance(interventions, Iterable):
        raise InputError(f"Expected an intervention (Cache, Steer, Patch, Ablate, Edit...) or a list of them, "
                         f"got {type(interventions).__name__}.")
    out: list[Intervention] = []
    for i, item in enumerate(interventions):
        if isinstance(item, Intervention):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out += as_interventions(item)
        else:
            raise InputError(f"Item {i} of the interventions is a {type(item).__name__}, not an intervention "
                             f"(Cache, Steer, Patch, Ablate, Edit...) or a list of them.")
    return out


def save_interventions(interventions: Interventions, path: str | os.PathLike[str]) -> None:
    """Save an ordered list of interventions (or one) into one folder."""
    interventions = as_interventions(interventions)
    config = {"interventions": [iv.to_dict() for iv in interventions]}
    tensors = {f"{i}.{k}": v for i, iv in enumerate(interventions) for k, v in iv.tensors().items()}
    save_artifact(path, config, tensors, config_name="interventions.json")


def load_interventions(path: str | os.PathLike[str]) -> list[Intervention]:
    config, tensors = load_artifact(path, config_name="interventions.json")
    where = os.path.join(path, "interventions.json")
    items = config.get("interventions")
    if not isinstance(items, list):
        raise ArtifactError(f"{where} has no list 'interventions'; it is not a saved intervention list.")
    out = []
    for i, data in enumerate(items):
        prefix = f"{i}."
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        out.append(_rebuild(data, own, f"{where} (item {i})"))
    return out


def _rebuild(data: Any, tensors: dict[str, torch.Tensor], where: str) -> Intervention:
    """:func:`intervention_from_dict`; a damaged entry (missing keys/tensors, wrong types) is an ArtifactError."""
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ArtifactError(f"{where}: an intervention entry must be an object with 'type' and 'config'.")
    try:
        return intervention_from_dict(data, tensors)
    except LmscopeError as err:
        raise ArtifactError(f"{where}: {err}") from None
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise ArtifactError(f"{where} is damaged: {type(err).__name__}: {err}.") from None
