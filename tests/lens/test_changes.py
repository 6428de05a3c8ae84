"""``layer_change``: the top tokens of one lens cell equal the decode's, and promoted/suppressed are the extremes of
the logit difference to the previous reading (the embedding, through the model's decoder, before the first)."""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import Cache, HookedModel
from lmscope.interventions.errors import InputError
from lmscope.lens.changes import layer_change
from lmscope.lens.lenses import LogitLens, TunedLens

PROMPT = [5, 17, 3, 44, 9, 12]


def tuned(model: HookedModel) -> TunedLens:
    lens = TunedLens(model)
    with torch.no_grad():
        lens.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    return lens


@pytest.mark.parametrize("make", [LogitLens, tuned])
@pytest.mark.parametrize("reading, position", [(1, -1), ("resid_post.2", 2), (0, 0)])
def test_change_is_the_logit_difference_to_the_previous_reading(llama_tiny: HookedModel, make: object,
                                                                reading: object, position: int) -> None:
    lens = make(llama_tiny)  # type: ignore[operator]
    got = layer_change(lens, PROMPT, reading, position, top_k=4)  # type: ignore[arg-type]
    i = lens.reading_index(reading)
    cache = llama_tiny.run([PROMPT], [Cache(["resid_pre.0", *lens.readings])]).cache
    now = lens.logits(cache[lens.readings[i]][0, position], i).float()
    before = lens.logits(cache[lens.readings[i - 1]][0, position], i - 1) if i else \
        llama_tiny.decode_hidden(cache["resid_pre.0"][0, position])
    change = (now - before.float()).detach()
    assert got.previous == (lens.readings[i - 1] if i else "resid_pre.0") and got.reading == lens.readings[i]
    assert [t for t, _, _ in got.promoted] == change.topk(4).indices.tolist()
    assert [t for t, _, _ in got.suppressed] == (-change).topk(4).indices.tolist()
    assert [v for _, _, v in got.promoted] == pytest.approx(change.topk(4).values.tolist(), abs=1e-5)
    assert got.suppressed[0][2] == pytest.approx(float(change.min()), abs=1e-5) and got.suppressed[0][2] < 0
    decoded = lens.decode(PROMPT, top_k=4)
    assert [t for t, _, _ in got.top] == decoded.top_ids[i, position % len(PROMPT)].tolist()
    assert [p for _, _, p in got.top] == pytest.approx(decoded.top_probs[i, position % len(PROMPT)].tolist(),
                                                        abs=1e-5)
    assert got.to_dict()["promoted"][0]["change"] == got.promoted[0][2]


@pytest.mark.parametrize("kw, message", [
    ({"reading": 9}, "out of range"),
    ({"position": 6}, "position must be an int in -6..5"),
    ({"top_k": 0}, "top_k must be an int"),
    ({"prompt": [PROMPT, PROMPT]}, "one prompt"),
])
def test_bad_arguments(llama_tiny: HookedModel, kw: dict, message: str) -> None:
    args = {"prompt": PROMPT, "reading": 1, **kw}
    with pytest.raises(InputError, match=message):
        layer_change(LogitLens(llama_tiny), **args)
