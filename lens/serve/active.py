"""The interventions one workbench request runs under, built fresh for it from its ``InterventionsSpec``.

Every view opens ``model.apply(active.interventions)`` around its library call, so its numbers are those of the
intervened model, and a session acts only on the forwards of the thread that opened it: other requests see the
model as it is. Heads are ablated at ``head_z`` (``Ablate(heads=[(layer, head), ...])``): ``"zero"`` sets them to
zero, ``"mean"`` to each head's mean output over the real tokens of one reference prompt (``mean_over``, by
default the request's own prompt, the clean one of a pair), fixed when the session binds, so partial forwards
(the exact patching engine) and full forwards replace the same value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from lmscope.interventions import Ablate, Intervention
from lmscope.interventions.errors import InputError

from .steering import describe, is_vector_folder, set_steers, vector_steers

if TYPE_CHECKING:
    from .schema import InterventionsSpec
    from .state import ServerState


@dataclass
class Active:
    """Fresh interventions for one request, and one line saying what each does (shown on the page)."""

    interventions: list[Intervention] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    key: str = "none"  # canonical JSON of what was asked: part of cache keys


def heads_label(heads: list[tuple[int, int]], how: str) -> str:
    return f"ablate ({how}) " + ", ".join(f"L{layer}H{head}" for layer, head in heads)


def check_heads(state: ServerState, heads: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``heads`` as sorted distinct (layer, head) pairs with non-negative indices, or an InputError naming one."""
    n_layers, n_heads = state.model.n_layers, state.model.n_heads
    out = set()
    for layer, head in heads:
        if not (-n_layers <= layer < n_layers and -n_heads <= head < n_heads):
            raise InputError(f"No head ({layer}, {head}) to ablate: this model has layers 0..{n_layers - 1} and heads "
                             f"0..{n_heads - 1}.")
        out.add((layer % n_layers, head % n_heads))
    return sorted(out)


def build_active(state: ServerState, spec: InterventionsSpec | None, prompt: Any) -> Active:
    """The interventions of ``spec`` for a request on ``prompt`` (measuring any typical norm first, outside any
    session); an empty :class:`Active` when nothing is asked."""
    if spec is None or not spec.active():
        return Active()
    out = Active(key=json.dumps(spec.model_dump(), sort_keys=True))
    if spec.ablate:
        heads = check_heads(state, [tuple(h) for h in spec.ablate])  # type: ignore[misc]
        if spec.how == "zero":
            out.interventions.append(Ablate(heads=heads, how="zero"))
        else:
            reference = spec.mean_over if spec.mean_over is not None else prompt
            # a token-id reference runs as one prompt, as model.run takes it
            out.interventions.append(Ablate(heads=heads, how="mean", reference=[cast(str, reference)]))
            out.key = json.dumps([spec.model_dump(), reference], sort_keys=True)
        out.labels.append(heads_label(heads, spec.how))
    at = spec.steer
    if at is not None and at.scale != 0:
        folder = state.steering_folder(at.name)
        if folder is not None and is_vector_folder(folder):
            steers = vector_steers(state.steering_vector(folder), at, state.norms)
        else:
            steers = set_steers(state.steering_for(at.name), at, state.model, state.norms)
        for iv in steers:
            iv.bind(state.model)  # a vector of the wrong size is a 400 now, not an error deep in a forward
        out.interventions += steers
        out.labels.append(describe(at, steers))
    return out
