"""``FrozenContext``: a batch's clean context activations, as the patch every intervened condition starts from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from lmscope.interventions.patch import Patch

from .prompts import BindingPrompt

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


class FrozenContext:
    """The clean ``resid_pre`` of every layer for a batch, as a ``Patch`` over each row's context positions.

    Applied first, it makes a run recompute only the question part: every context position at every layer
    is overwritten with its clean value (binding interventions then add to or replace some of them). Scoring
    hands one to each condition's interventions builder per batch (``make(rows, frozen)``); the KV path
    reproduces a condition only when ``frozen.patch`` is its first intervention.
    """

    def __init__(self, model: HookedModel, prompts: Sequence[BindingPrompt], cache: object) -> None:
        self.prompts = list(prompts)
        self.patch = Patch("resid_pre.*", cache, positions=[slice(0, p.context_len) for p in prompts])
        self.n_layers = model.n_layers
