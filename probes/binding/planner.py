"""The KV path's write planner: which context cells a condition writes, or why the KV path cannot reproduce it.

Under the frozen context the ``resid_pre`` of every context token at every layer is fixed before the other
interventions see it, so a condition changes the context only through what those interventions write there.
:func:`plan_writes` finds those writes by handing the interventions, inside a session the core opens (it
binds and starts them as for a forward; no forward runs), a full-prompt layout per layer: the clean
context values, random values at the question tokens and padding. The KV path then rewrites exactly the
cells that differ from the clean ones (:mod:`lmscope.probes.binding.kvpath`).

That is exact only when every write to a context cell is a function of that row's context alone. The planner
guarantees it in two ways, and returns the reason (a string) instead of a plan when either fails:

- by type (:data:`PLANNABLE`): only interventions whose values at a row come from fixed values, that row's
  own cells and its position spec are planned (``Patch``, ``Steer``, ``BindingShift``, ``Ablate`` with
  ``how="zero"`` or a mean over reference prompts). A mean or a resample ablation without a reference reads
  the question tokens and the other prompts of the batch; a resample from a reference picks its prompt by
  batch position; an ``Edit`` may compute anything from the whole tensor; a reader (``Cache``) would record
  planning layouts instead of forwards. The KV path batches prompts by context, not as the full path does,
  so anything that depends on the batch cannot be planned;
- by perturbation: the layout is planned with two independent random draws at the non-context cells; a
  write outside the context, or context writes that differ between the draws, refuse the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from lmscope.interventions.ablate import Ablate
from lmscope.interventions.base import Intervention
from lmscope.interventions.cache import ActivationCache
from lmscope.interventions.edit import Edit
from lmscope.interventions.inputs import pad as pad_ids
from lmscope.interventions.patch import Patch, to_token_coordinates
from lmscope.interventions.positions import ForwardContext
from lmscope.interventions.steer import Steer

from .contexts import pad_id
from .frozen import FrozenContext
from .prompts import BindingPrompt
from .shift import BindingShift

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


@dataclass
class WritePlan:
    """What a condition writes at the context: per row the token indices whose ``resid_pre`` differs from the
    clean one at some layer (``written``), and per layer their intended values, row-major (``values``)."""

    written: list[list[int]]
    values: list[torch.Tensor]


def _ablate(iv: Ablate) -> str | None:
    if iv.how == "zero" or (iv.how == "mean" and iv.reference is not None):
        return None
    if iv.how == "mean":
        return ("Ablate(how='mean') without a reference averages over every real token of the forward (question "
                "tokens and the other prompts of the batch)")
    return ("Ablate(how='resample') takes another prompt's activations, chosen by its place in the batch (the "
            "KV path batches prompts by context)")


def _always(iv: Any) -> str | None:
    return None


#: Intervention types (exact type: a subclass may override ``__call__``) the planner reproduces, each with
#: the rule that says why one of them cannot be planned (None: it can).
PLANNABLE: dict[type[Intervention], Callable[[Any], str | None]] = {
    Patch: _always, Steer: _always, BindingShift: _always, Ablate: _ablate}
#: Why some known types are never planned (anything else outside PLANNABLE gets a generic reason).
NEVER: dict[type[Intervention], str] = {
    Edit: "Edit applies an arbitrary function to the whole site tensor (it may read the question tokens or the "
          "other prompts of the batch)"}


def unplannable(model: HookedModel, ivs: list[Intervention], frozen: FrozenContext) -> str | None:
    """Why the KV path cannot reproduce ``ivs`` whatever they write (None: plan them)."""
    if not ivs or ivs[0] is not frozen.patch:
        return "its first intervention is not the batch's frozen context (FrozenContext.patch)"
    for iv in ivs[1:]:
        name = type(iv).__name__
        if not iv.writes:
            return f"{name} reads activations; planning would hand it planning layouts, not forwards"
        other = [s.name for s in iv.sites(model) if s.kind != "resid_pre"]
        if other:
            return f"{name} acts on {other[0]}; the KV path rewrites only resid_pre of context tokens"
        rule = PLANNABLE.get(type(iv))
        if rule is None:
            return NEVER.get(type(iv), f"{name} is not an intervention the planner can reproduce exactly "
                                       f"(it plans {', '.join(t.__name__ for t in PLANNABLE)})")
        why = rule(iv)
        if why is not None:
            return why
    return None


class PlanLayout:
    """One batch's planning layout, shared by its conditions: where each row's context cells sit in the
    left-padded full-prompt layout, their clean values per layer, and the random draws elsewhere."""

    def __init__(self, model: HookedModel, chunk: list[BindingPrompt], acts: ActivationCache) -> None:
        batch = pad_ids([list(p.ids) for p in chunk], pad_id(model), "left")
        b, self.width = batch.input_ids.shape
        self.model, self.acts, self.mask = model, acts, batch.attention_mask.to(model.device)
        self.rows = torch.cat([torch.full((p.context_len,), i) for i, p in enumerate(chunk)])
        self.toks = torch.cat([torch.arange(p.context_len) for p in chunk])
        self.cols = self.toks + torch.tensor([self.width - len(p.ids) for p in chunk])[self.rows]
        inside = torch.zeros(b, self.width, dtype=torch.bool)
        inside[self.rows, self.cols] = True
        self.outside = ~inside
        self._clean: dict[int, torch.Tensor] = {}
        self._noise: dict[int, torch.Tensor] = {}

    def clean(self, layer: int) -> torch.Tensor:
        """The clean ``resid_pre.<layer>`` of every context cell ``[cells, d_model]`` (row-major)."""
        if layer not in self._clean:
            name = self.model.resolve(f"resid_pre.{layer}")[0].name
            tokens = to_token_coordinates(self.acts[name], self.acts.attention_mask)
            self._clean[layer] = tokens[self.rows.to(tokens.device), self.toks.to(tokens.device)]
        return self._clean[layer]

    def noise(self, draw: int) -> torch.Tensor:
        """Seeded random values ``[rows, width, d_model]`` for the non-context cells (draw ``draw``)."""
        if draw not in self._noise:
            like = self.clean(0)
            gen = torch.Generator().manual_seed(draw)
            self._noise[draw] = torch.randn(len(self.outside), self.width, like.shape[-1], generator=gen).to(like)
        return self._noise[draw]


def _virtual_forward(model: HookedModel, ivs: list[Intervention], layout: PlanLayout,
                     draw: int) -> list[torch.Tensor] | str:
    """Hand each layer's layout through the interventions after the frozen patch (which would rewrite the
    clean values the layout holds); per layer the context cells they leave, or why that cannot be planned."""
    per_site: dict[Any, list[Intervention]] = {}
    for iv in ivs[1:]:
        for site in iv.sites(model):
            per_site.setdefault(site, []).append(iv)
    noise = layout.noise(draw)
    ctx = ForwardContext(layout.mask, 0, layout.width)  # a fresh one per forward, as a session's backend makes
    rows, cols, outside = (t.to(noise.device) for t in (layout.rows, layout.cols, layout.outside))
    cells = []
    for layer in range(model.n_layers):
        site = model.resolve(f"resid_pre.{layer}")[0]
        if site not in per_site:  # nothing but the frozen patch here: the context stays clean
            cells.append(layout.clean(layer))
            continue
        value = noise.clone()
        value[rows, cols] = layout.clean(layer)
        for iv in per_site[site]:
            new = iv(value, site, ctx)
            if new is not None:
                value = new
        if bool(((value != noise).any(-1) & outside).any()):
            return f"it writes {site.name} outside the context (question tokens or padding)"
        cells.append(value[rows, cols])
    return cells


def plan_writes(model: HookedModel, ivs: list[Intervention], frozen: FrozenContext,
                layout: PlanLayout) -> WritePlan | str:
    """The :class:`WritePlan` of ``ivs`` on ``layout``'s batch, or why the KV path cannot reproduce them.

    The interventions are bound and started by the core (``model.apply``), as for a forward, and planned
    with two random draws at the non-context cells; see the module docstring for what is refused.
    """
    why = unplannable(model, ivs, frozen)
    if why is not None:
        return why
    with model.apply(ivs):
        first = _virtual_forward(model, ivs, layout, 0)
        second = first if isinstance(first, str) else _virtual_forward(model, ivs, layout, 1)
    if isinstance(first, str) or isinstance(second, str):
        return first if isinstance(first, str) else str(second)
    if not all(torch.equal(a, b) for a, b in zip(first, second)):
        return "its writes at the context depend on the question tokens (two random draws there gave other writes)"
    changed = torch.zeros(len(layout.rows), dtype=torch.bool, device=first[0].device)
    for layer, cells in enumerate(first):
        changed |= (cells != layout.clean(layer)).any(-1)
    written = [layout.toks[(layout.rows == i) & changed.cpu()].tolist() for i in range(len(layout.outside))]
    return WritePlan(written, [cells[changed] for cells in first])
