"""What one layer changed in a lens reading: the tokens it promoted and suppressed at one position.

For reading ``i`` of a lens at token ``position`` of one prompt, the *change* is the difference of lens logits
``z_i - z_{i-1}`` (full vocabulary, float32), where ``z_{i-1}`` is the lens's previous reading; before the first
reading it is the input embedding (``resid_pre.0``) read through the model's own final norm and unembedding
(the logit lens: no lens translates the embedding). The promoted tokens are the ``k`` largest changes, the
suppressed ones the ``k`` most negative. Log-probabilities differ from logits by one constant per reading, so
the same tokens top the change of log-probabilities. One forward (under any session the caller has open).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError

if TYPE_CHECKING:
    from .lenses import Lens


@dataclass
class LayerChange:
    """Reading ``reading`` (previous: ``previous``) at token ``position``: the reading's ``top`` tokens
    ``(id, token, prob)``, and the ``promoted`` / ``suppressed`` tokens ``(id, token, logit change)``."""

    reading: str
    previous: str
    position: int
    token: str
    top: list[tuple[int, str, float]]
    promoted: list[tuple[int, str, float]]
    suppressed: list[tuple[int, str, float]]

    def to_dict(self) -> dict[str, Any]:
        rows = lambda items, key: [{"id": i, "token": t, key: v} for i, t, v in items]  # noqa: E731
        return {"reading": self.reading, "previous": self.previous, "position": self.position, "token": self.token,
                "top": rows(self.top, "prob"), "promoted": rows(self.promoted, "change"),
                "suppressed": rows(self.suppressed, "change")}


def _name(lens: Lens, i: int) -> str:
    tok = lens.model.tokenizer
    return tok.decode([i]) if tok is not None else str(i)


@torch.no_grad()
def layer_change(lens: Lens, prompt: Any, reading: int | str, position: int = -1, top_k: int = 10) -> LayerChange:
    """The top tokens of ``reading`` (index or site name, e.g. ``"resid_post.5"``) at ``position`` (negative from
    the end) of one ``prompt``, and the tokens that reading promoted and suppressed (module docstring)."""
    model = lens.model
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= model.d_vocab:
        raise InputError(f"top_k must be an int in 1..{model.d_vocab}, got {top_k!r}.")
    i = lens.reading_index(reading)
    previous = lens.readings[i - 1] if i > 0 else "resid_pre.0"
    batch = model.tokenize(prompt)
    if batch.input_ids.shape[0] != 1:
        raise InputError("layer_change reads one prompt (a string or one token-id list).")
    n = int(batch.input_ids.shape[1])
    if isinstance(position, bool) or not isinstance(position, int) or not -n <= position < n:
        raise InputError(f"position must be an int in {-n}..{n - 1} (the prompt has {n} tokens), got {position!r}.")
    position %= n
    cache = Cache([lens.readings[i], previous])
    model.run(batch, [cache])
    now = lens.logits(cache[lens.readings[i]][0, position], i).float()
    h_prev = cache[previous][0, position]
    before = (lens.logits(h_prev, i - 1) if i > 0 else model.decode_hidden(h_prev)).float()
    probs = torch.softmax(now, -1)
    top = probs.topk(top_k)
    change = now - before
    up, down = change.topk(top_k), (-change).topk(top_k)
    items = lambda ids, vals: [(int(t), _name(lens, int(t)), float(v)) for t, v in zip(ids, vals)]  # noqa: E731
    return LayerChange(lens.readings[i], previous, position, _name(lens, int(batch.input_ids[0, position])),
                       items(top.indices, top.values), items(up.indices, up.values),
                       items(down.indices, -down.values))
