"""What every backend shares: one session of interventions on one model, and the order they run in.

A backend (PyTorch hooks, an nnsight trace) decides *how* a site's value is reached; this module decides
what happens to it there. :func:`open_session` checks the list (intervention objects only), binds each
intervention to the model (validation and preparatory runs, before any hook exists), groups them per site
(list order kept) and starts them. The backend then visits the sites in :func:`forward_order` and hands
each value to :meth:`Session.run_site`, which passes it through that site's interventions in order.

Sessions are context-local. :func:`activated` marks a session open in the current context (a
:class:`contextvars.ContextVar`: per thread, and per asyncio task) for the body of a ``with``;
:meth:`Session.is_active` is what a hook on a shared module checks before acting, so forwards run in other
contexts pass through untouched. Python threads start with an empty context, so a thread started inside a
session does not inherit it; an asyncio task created inside one does (tasks copy the context). Sessions
opened inside an open one nest: :func:`active_sessions` lists them outermost first.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..base import Intervention
from ..cache import session_cache
from ..errors import InputError
from ..locations import ATTENTION_FUNCTION_SITES, EAGER_SITES
from ..positions import ForwardContext
from ..sites import LAYER_SITES, Site

if TYPE_CHECKING:
    from ..model import HookedModel

#: The sessions open in the current context (thread / asyncio task), outermost first.
_ACTIVE: ContextVar[tuple[Session, ...]] = ContextVar("lmscope_sessions", default=())


class Session:
    """State of one session: the forward context, the interventions per site, and per-forward scratch."""

    def __init__(self, model: HookedModel, interventions: list[Intervention]) -> None:
        self.model = model
        self.interventions = interventions
        #: the forward now running (set by the backend before the first site of each forward)
        self.ctx: ForwardContext | None = None
        self.per_site: dict[Site, list[Intervention]] = {}
        for iv in interventions:
            for site in iv.sites(model):
                self.per_site.setdefault(site, []).append(iv)
        #: each layer's input in the forward now running, kept by a backend that reads ``resid_mid`` from it
        self.resid_pre: dict[int, torch.Tensor] = {}
        #: whether this session needs the eager attention (scores / probabilities), or only an attention function
        #: that runs hooks (``rot_q`` / ``rot_k``)
        self.wants_pattern = any(s.kind in EAGER_SITES for s in self.per_site)
        self.wants_attention_fn = any(s.kind in ATTENTION_FUNCTION_SITES for s in self.per_site)

    def is_active(self) -> bool:
        """Whether this session is open in the current context (its hooks act only then)."""
        return self in _ACTIVE.get()

    @property
    def cache(self) -> Any:
        """What every ``Cache`` of this session recorded, as an :class:`ActivationCache`."""
        return session_cache(self.model, self)

    def run_site(self, site: Site, value: torch.Tensor) -> torch.Tensor | None:
        """Pass ``value`` through the site's interventions in order; None if none changed it."""
        assert self.ctx is not None, "forward context missing: was the model called through its top module?"
        changed = False
        for iv in self.per_site[site]:
            new = iv(value, site, self.ctx)
            if new is not None:
                if not iv.writes:
                    raise InputError(f"{type(iv).__name__} is read-only (writes = False) but returned a value at "
                                     f"{site.name}; a reader returns None (or declare writes = True).")
                value, changed = new, True
        return value if changed else None


def validate(interventions: list[Any]) -> None:
    """Refuse anything that is not an :class:`Intervention` (before any of them is bound or started)."""
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise InputError(f"Expected intervention objects (Cache, Steer, Patch, Ablate, Edit...), "
                             f"got {type(iv).__name__}.")


def open_session(model: HookedModel, interventions: list[Intervention]) -> Session:
    """Validate, bind every intervention to ``model``, group them per site, then start them (in list order).

    Binding (validation and preparatory runs) happens for all of them before any starts, and before the
    backend registers anything, so a refused list leaves the model untouched."""
    validate(interventions)
    for iv in interventions:
        iv.bind(model)
    session = Session(model, interventions)
    for iv in interventions:
        iv.start()
    return session


def active_sessions() -> tuple[Session, ...]:
    """The sessions open in the current context, outermost first."""
    return _ACTIVE.get()


@contextmanager
def activated(session: Session) -> Iterator[None]:
    """Open ``session`` in the current context for the body (nested on any already open); always close it."""
    token = _ACTIVE.set((*_ACTIVE.get(), session))
    try:
        yield
    finally:
        try:
            _ACTIVE.reset(token)
        except ValueError:  # closed from another context than the one that opened it
            _ACTIVE.set(tuple(s for s in _ACTIVE.get() if s is not session))


_ORDER = {k: i for i, k in enumerate(("embed", *LAYER_SITES, "final_norm", "logits"))}


def forward_order(site: Site) -> tuple[int, int]:
    """Sort key putting sites in the order a forward reaches them: by layer (``embed`` first, model-level
    sites after the last layer), then by kind in :data:`LAYER_SITES` order."""
    layer = site.layer if site.layer is not None else (-1 if site.kind == "embed" else 1 << 30)
    return layer, _ORDER[site.kind]
