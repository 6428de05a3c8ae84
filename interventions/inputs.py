"""Turning prompts or token ids into one padded batch with the right mask and position ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch

from .errors import InputError

Inputs = Union[str, Sequence[str], torch.Tensor, Sequence[Sequence[int]], "Batch"]
PADDING_SIDES = ("left", "right")


@dataclass
class Batch:
    """A padded batch. ``position_ids`` count real tokens only, so padding never shifts positions."""

    input_ids: torch.Tensor  # [batch, pos]
    attention_mask: torch.Tensor  # [batch, pos], 1 = real token
    position_ids: torch.Tensor  # [batch, pos]
    texts: list[str] | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(1)

    @property
    def last_index(self) -> torch.Tensor:
        """Column of each row's last real token."""
        cols = torch.arange(self.attention_mask.shape[1], device=self.attention_mask.device)
        return (self.attention_mask.bool() * (cols + 1)).argmax(1)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                     self.texts)


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def pad(sequences: list[list[int]], pad_id: int, side: str) -> Batch:
    """Pad token-id lists to one tensor on ``side`` (``"left"`` or ``"right"``)."""
    if side not in PADDING_SIDES:
        raise InputError(f"padding_side must be 'left' or 'right', got {side!r}.")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        sl = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[i, sl] = torch.tensor(seq, dtype=torch.long)
        mask[i, sl] = 1
    return Batch(ids, mask, position_ids_from_mask(mask))


def encode(inputs: Any, tokenizer: Any, *, padding_side: str = "left", max_length: int | None = None,
           pad_id: int | None = None, add_special_tokens: bool = True) -> Batch:
    """Tokenise strings (one by one, then pad) or pad token ids; validate emptiness and length."""
    if isinstance(inputs, Batch):
        return inputs
    texts: list[str] | None = None
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, torch.Tensor):
        if inputs.is_floating_point():
            raise InputError("Token ids must be an integer tensor, got a floating-point one.")
        if inputs.dim() == 1:
            inputs = inputs[None]
        if inputs.dim() != 2:
            raise InputError(f"Token ids must have shape [pos] or [batch, pos], got {tuple(inputs.shape)}.")
        seqs = [row.tolist() for row in inputs]
    elif isinstance(inputs, Sequence) and len(inputs) > 0 and all(isinstance(x, str) for x in inputs):
        if tokenizer is None:
            raise InputError("This model has no tokenizer: pass token ids instead of strings, or give a tokenizer.")
        texts = list(inputs)
        for i, t in enumerate(texts):
            if not t:
                raise InputError(f"Prompt {i} is an empty string; every prompt needs at least one token.")
        seqs = [list(tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"]) for t in texts]
    elif isinstance(inputs, Sequence) and len(inputs) > 0 and all(isinstance(x, (list, tuple)) for x in inputs):
        seqs = [list(map(int, x)) for x in inputs]
    elif isinstance(inputs, Sequence) and len(inputs) > 0 and all(isinstance(x, int) for x in inputs):
        seqs = [list(inputs)]
    elif isinstance(inputs, Sequence) and len(inputs) == 0:
        raise InputError("No prompts given: pass a string, a list of strings or token ids.")
    else:
        raise InputError(f"Cannot read inputs of type {type(inputs).__name__}: pass a string, a list of strings, "
                         "a LongTensor of token ids [pos] or [batch, pos], or a list of token-id lists.")
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise InputError(f"Prompt {i} has no tokens; every prompt needs at least one token.")
        if max_length is not None and len(s) > max_length:
            raise InputError(f"Prompt {i} has {len(s)} tokens, longer than the model's context window of "
                             f"{max_length}; shorten it or split it.")
    if pad_id is None:
        pad_id = 0
        if tokenizer is not None:
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    batch = pad(seqs, pad_id, padding_side)
    batch.texts = texts
    return batch
