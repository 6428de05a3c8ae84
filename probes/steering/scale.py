"""What a steering scale means: the typical residual norm at a layer, with outlier positions left out.

A steering vector's own norm says little about how hard it pushes: what matters is its size against the
residual stream it is added to. On SmolLM2 the residual at ``resid_pre.16`` has a norm of about 130 at
ordinary tokens, but about 5x that at the first position (the attention-sink outlier), so both a raw vector
(norm ~47, times 8 = 3x the stream: "and and and...") and a unit vector (times 8 = 6% of the stream:
nothing visible) are hard to reason about. ``to_steer(scale, unit="resid")`` adds ``scale`` times the
layer's typical residual norm along the vector's direction: ``0.5`` pushes by half a typical residual.

A token is an *outlier* at a site when its residual norm exceeds ``OUTLIER_FACTOR`` times the median norm of
its prompt's real tokens at that site. Outliers are left out of the typical norm and of ``token="mean"``
steering vectors (where one sink token would otherwise dominate the average).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from lmscope.interventions.cache import Cache
from lmscope.interventions.collect import (  # noqa: F401 (inlier_mask, masked_mean re-exported)
    OUTLIER_FACTOR,
    NormTally,
    inlier_mask,
    masked_mean,
)
from lmscope.interventions.errors import InputError
from lmscope.interventions.specs import as_prompt_list

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

#: the units ``to_steer``/``generation_sweep``/``lmscope steer`` take a scale in
UNITS = ("raw", "resid")


def typical_norms(model: HookedModel, prompts: Sequence[Any], sites: Sequence[str], batch_size: int = 16,
                  factor: float | None = OUTLIER_FACTOR) -> tuple[dict[str, float], dict[str, int]]:
    """Mean residual norm of each site over the prompts' real tokens, outlier positions left out.

    Returns ``(norms, left_out)``: site -> typical norm, and site -> how many tokens were left out as outliers.
    One ``model.run`` with ``Cache(sites)`` per batch.
    """
    items = as_prompt_list(list(prompts), "prompts")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    tally = NormTally(sites, factor)
    for start in range(0, len(items), batch_size):
        res = model.run(items[start:start + batch_size], Cache(list(sites)))
        for s in sites:
            tally.add(s, res.cache[s], res.batch.attention_mask)
    return tally.result()


def check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise InputError(f"unit must be one of {', '.join(UNITS)} ('resid': scale x the layer's typical residual "
                         f"norm along the vector's direction; 'raw': scale x the vector as stored), got {unit!r}.")
