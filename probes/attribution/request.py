"""What a direct-logit-attribution call asks for: its prompts, each prompt's target and contrast token, and the
token of each prompt whose logit is decomposed (as a column of the left-padded batch).

One prompt is a string, a token-id list or a 1-D tensor; a dataset is a list of strings or of token-id lists, or a
2-D tensor. Targets, contrasts and positions are one value for every prompt or a list with one per prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.errors import InputError

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel
    from lmscope.interventions.inputs import Batch


def token_of(model: HookedModel, token: str | int) -> int:
    """A single-token string or a token id as an id, checked against the vocabulary."""
    if isinstance(token, int) and not isinstance(token, bool):
        if not 0 <= token < model.d_vocab:
            raise InputError(f"Token id {token} is outside the vocabulary (0..{model.d_vocab - 1}).")
        return token
    if isinstance(token, str):
        return model.token_id(token)
    raise InputError(f"A target must be a single-token string or a token id, got {token!r}.")


def as_prompts(prompt: Any) -> tuple[list[Any], bool]:
    """``(prompts, single)``: the prompts of a call and whether it named one prompt (see the module docstring)."""
    if isinstance(prompt, str):
        return [prompt], True
    if isinstance(prompt, torch.Tensor) and not prompt.is_floating_point() and prompt.dim() in (1, 2):
        return ([prompt.tolist()], True) if prompt.dim() == 1 else ([row.tolist() for row in prompt], False)
    if isinstance(prompt, (list, tuple)) and prompt:
        if all(isinstance(x, int) and not isinstance(x, bool) for x in prompt):
            return [list(prompt)], True
        if all(isinstance(x, str) for x in prompt) or all(isinstance(x, (list, tuple)) for x in prompt):
            return list(prompt), False
    raise InputError("attribute takes one prompt (a string or one token-id list) or a dataset (a list of strings or "
                     f"of token-id lists), got {type(prompt).__name__} {str(prompt)[:60]!r}.")


def tokens_per_prompt(model: HookedModel, token: Any, n: int, what: str) -> list[int | None]:
    """One token id (or None, for a contrast not given) per prompt: ``token`` for all, or a list of ``n``."""
    if isinstance(token, (list, tuple)):
        if len(token) != n:
            raise InputError(f"{what} is a list of {len(token)} tokens but there are {n} prompts; give one {what} "
                             "per prompt, or one for all.")
        return [None if t is None and what == "contrast" else token_of(model, t) for t in token]
    if token is None and what == "contrast":
        return [None] * n
    return [token_of(model, token)] * n


def positions_per_prompt(positions: int | Sequence[int], n: int) -> list[Any]:
    """``positions`` as one token index per prompt: one index for every prompt, or a list of ``n``."""
    wanted = list(positions) if isinstance(positions, (list, tuple)) else [positions] * n
    if len(wanted) != n:
        raise InputError(f"positions is a list of {len(wanted)} but there are {n} prompts; give one token index per "
                         "prompt, or one for all (-1: each prompt's last token).")
    return wanted


def query_columns(batch: Batch, wanted: list[Any], first: int = 0) -> list[int]:
    """Each prompt's decomposed token as a column of the left-padded ``batch``: ``wanted`` holds one token index
    per prompt (:func:`positions_per_prompt`), each counted in that prompt's own tokens (negative from its end);
    ``first``: the dataset index of the batch's first prompt (for the error message)."""
    lengths = [int(x) for x in batch.attention_mask.sum(1).tolist()]
    width = int(batch.input_ids.shape[1])
    out = []
    for i, (p, length) in enumerate(zip(wanted, lengths)):
        if isinstance(p, bool) or not isinstance(p, int) or not -length <= p < length:
            raise InputError(f"Position {p!r} is outside prompt {first + i}'s {length} tokens (valid "
                             f"0..{length - 1}, or -{length}..-1 from its end).")
        out.append(width - length + p % length)
    return out
