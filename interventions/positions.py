"""Which token positions an intervention touches, and the per-forward context that decides it.

Positions are *token indices of each prompt without padding*: 0 is a prompt's
first real token, -1 its last prompt token, whatever the padding side. During
generation with a KV cache each forward only sees new tokens; the
:class:`ForwardContext` maps them back to token indices so a position means the
same thing on the prompt pass and on every single-token step.

Accepted specs:

- ``None`` or ``"all"``: every real (non-padding) token, prompt and generated;
- ``"prompt"`` / ``"generated"``: only prompt tokens / only generated tokens;
- an ``int`` (negative counts from the end of the prompt), a list of ints, or a
  ``slice`` over the prompt (``slice(3, 6)`` is the token span 3..5);
- a list with one such spec per batch row (for spans that differ per prompt).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from .errors import InputError

PositionSpec = Union[None, str, int, slice, Sequence[int], Sequence[Union[int, slice, Sequence[int]]]]
_NAMED = ("all", "prompt", "generated")


class ForwardContext:
    """What a hook needs to know about the forward pass it runs in.

    ``attention_mask`` covers every column seen so far (past + current), ``offset``
    is the number of cached columns before this forward, ``pad_left`` the first
    real column of each row and ``prompt_len`` the real prompt length of each row
    (both fixed at the session's first, cache-free forward). Derived tensors are
    computed on first use and memoised, so a forward whose interventions never
    look at positions pays nothing for them.
    """

    def __init__(self, attention_mask: torch.Tensor, offset: int, seq_len: int,
                 pad_left: torch.Tensor | None = None, prompt_len: torch.Tensor | None = None) -> None:
        self.attention_mask = attention_mask  # [batch, offset + seq] (1 = real token)
        self.offset = offset
        self.seq_len = seq_len
        self._pad_left = pad_left
        self._prompt_len = prompt_len
        self._token_index: torch.Tensor | None = None
        self._real: torch.Tensor | None = None
        self.masks: dict[str, torch.Tensor] = {}  # memo of position_mask per spec

    def _prompt_stats(self) -> None:
        real_prompt = self.attention_mask[:, : self.offset + self.seq_len].long()
        self._pad_left = torch.argmax(real_prompt, dim=1)  # first 1 (0 when the row has no padding)
        self._prompt_len = real_prompt.sum(dim=1)

    @property
    def pad_left(self) -> torch.Tensor:
        """[batch] first real column of each row."""
        if self._pad_left is None:
            self._prompt_stats()
        assert self._pad_left is not None
        return self._pad_left

    @property
    def prompt_len(self) -> torch.Tensor:
        """[batch] number of real prompt tokens of each row."""
        if self._prompt_len is None:
            self._prompt_stats()
        assert self._prompt_len is not None
        return self._prompt_len

    @property
    def batch_size(self) -> int:
        return int(self.attention_mask.shape[0])

    @property
    def token_index(self) -> torch.Tensor:
        """[batch, seq] token index of each column of this forward (negative on left padding)."""
        if self._token_index is None:
            cols = torch.arange(self.offset, self.offset + self.seq_len, device=self.attention_mask.device)
            self._token_index = cols[None, :] - self.pad_left[:, None]
        return self._token_index

    @property
    def real(self) -> torch.Tensor:
        """[batch, seq] True on real tokens, False on padding."""
        if self._real is None:
            self._real = self.attention_mask[:, self.offset:self.offset + self.seq_len].bool()
        return self._real

    @property
    def all_real(self) -> bool:
        """True when this forward has no padding at all (the common unbatched case)."""
        return bool(self.real.all())

    @staticmethod
    def from_mask(attention_mask: torch.Tensor, offset: int, seq_len: int,
                  previous: ForwardContext | None = None) -> ForwardContext:
        """Build the context of one forward; a cache-free forward (offset 0) starts a new sequence."""
        if offset == 0 or previous is None or previous.batch_size != attention_mask.shape[0]:
            return ForwardContext(attention_mask, offset, seq_len)
        return ForwardContext(attention_mask, offset, seq_len, previous.pad_left, previous.prompt_len)


def _is_per_row(spec: object) -> bool:
    return isinstance(spec, (list, tuple)) and len(spec) > 0 and any(
        isinstance(s, (list, tuple, slice)) for s in spec)


def _row_indices(spec: object, prompt_len: int, row: int) -> list[int]:
    """Explicit token indices of one row (negative ints count back from the prompt end)."""
    if isinstance(spec, bool):
        raise InputError(f"positions must be ints, slices or one of {_NAMED}, got a bool.")
    if isinstance(spec, int):
        idx = spec + prompt_len if spec < 0 else spec
        if not 0 <= idx < prompt_len:
            raise InputError(f"Position {spec} is outside prompt {row}, which has {prompt_len} tokens "
                             f"(valid: 0..{prompt_len - 1} or -{prompt_len}..-1).")
        return [idx]
    if isinstance(spec, slice):
        _check_slice(spec)
        picked = list(range(prompt_len))[spec]
        if not picked:
            raise InputError(f"Position slice {spec} selects no token of prompt {row} ({prompt_len} tokens).")
        return picked
    if isinstance(spec, (list, tuple)):
        out: list[int] = []
        for s in spec:
            out += _row_indices(s, prompt_len, row)
        return out
    raise InputError(f"Cannot read positions {spec!r}: use None, {', '.join(map(repr, _NAMED))}, "
                     "an int, a list of ints, a slice, or one such spec per batch row.")


def _check_slice(spec: slice) -> None:
    """A position slice has int (or None) bounds and a non-zero step, as Python's own slicing requires."""
    parts = (spec.start, spec.stop, spec.step)
    if any(p is not None and (not isinstance(p, int) or isinstance(p, bool)) for p in parts):
        raise InputError(f"Position slice {spec!r}: start, stop and step must be ints or None.")
    if spec.step == 0:
        raise InputError(f"Position slice {spec!r} has step 0; use a non-zero step (or None for 1).")


def validate_positions(spec: PositionSpec) -> PositionSpec:
    """Reject malformed specs when an intervention is built, not mid-forward."""
    if isinstance(spec, slice):
        _check_slice(spec)
        return spec
    if spec is None or (isinstance(spec, int) and not isinstance(spec, bool)):
        return spec
    if isinstance(spec, str):
        if spec not in _NAMED:
            raise InputError(f"Unknown positions {spec!r}; named positions are {', '.join(map(repr, _NAMED))}.")
        return spec
    if isinstance(spec, (list, tuple)):
        if len(spec) == 0:
            raise InputError("positions is an empty list; pass None for every position.")
        for s in spec:
            if isinstance(s, (list, tuple)):
                validate_positions(list(s)) if len(s) else None
            elif not isinstance(s, (int, slice)) or isinstance(s, bool):
                raise InputError(f"positions entry {s!r} is not an int, slice or list.")
            elif isinstance(s, slice):
                _check_slice(s)
        return list(spec)
    raise InputError(f"Cannot read positions {spec!r}: use None, {', '.join(map(repr, _NAMED))}, "
                     "an int, a list of ints, a slice, or one such spec per batch row.")


def prompt_indices(spec: PositionSpec, prompt_lens: Sequence[int]) -> list[list[int]]:
    """Explicit token indices ``spec`` selects in each prompt (of ``prompt_lens`` tokens), outside a forward.

    For readers that index prompts themselves (lens trajectories): ``None``, ``"all"`` and ``"prompt"``
    select every token; ``"generated"`` selects none of a prompt and is refused; per-row specs need one
    entry per prompt. Negative indices become positive; errors are the same as during a forward.
    """
    spec = validate_positions(spec)
    if spec is None or spec in ("all", "prompt"):
        return [list(range(n)) for n in prompt_lens]
    if isinstance(spec, str):
        raise InputError(f"positions={spec!r} selects no prompt token; use None, 'all', an int or a list.")
    if _is_per_row(spec):
        if len(spec) != len(prompt_lens):  # type: ignore[arg-type]
            raise InputError(f"Per-row positions have {len(spec)} entries but there are "  # type: ignore[arg-type]
                             f"{len(prompt_lens)} prompts.")
        return [_row_indices(s, n, i) for i, (s, n) in enumerate(zip(spec, prompt_lens))]  # type: ignore[arg-type]
    return [_row_indices(spec, n, i) for i, n in enumerate(prompt_lens)]


def token_indices(spec: PositionSpec, ctx: ForwardContext) -> list[list[int]] | None:
    """Explicit per-row token indices, or None for the named specs (which need no list)."""
    if spec is None or isinstance(spec, str):
        return None
    prompt_len = ctx.prompt_len.tolist()
    if _is_per_row(spec):
        if len(spec) != ctx.batch_size:  # type: ignore[arg-type]
            raise InputError(f"Per-row positions have {len(spec)} entries but the batch has "  # type: ignore[arg-type]
                             f"{ctx.batch_size} prompts.")
        return [_row_indices(s, prompt_len[i], i) for i, s in enumerate(spec)]  # type: ignore[arg-type]
    return [_row_indices(spec, prompt_len[i], i) for i in range(ctx.batch_size)]


def position_mask(spec: PositionSpec, ctx: ForwardContext) -> torch.Tensor:
    """[batch, seq] bool: the cells of this forward that ``spec`` selects (never padding); memoised per forward."""
    key = repr(spec)
    mask = ctx.masks.get(key)
    if mask is None:
        mask = ctx.masks[key] = _position_mask(spec, ctx)
    return mask


def _position_mask(spec: PositionSpec, ctx: ForwardContext) -> torch.Tensor:
    real = ctx.real
    if spec is None or spec == "all":
        return real
    tok = ctx.token_index
    if spec == "prompt":
        return real & (tok < ctx.prompt_len[:, None])
    if spec == "generated":
        return real & (tok >= ctx.prompt_len[:, None])
    rows = token_indices(spec, ctx)
    assert rows is not None
    mask = torch.zeros_like(real)
    for i, idx in enumerate(rows):
        wanted = torch.tensor(idx, device=tok.device)
        mask[i] = (tok[i, :, None] == wanted[None, :]).any(-1)
    return mask & real


def gather_positions(value: torch.Tensor, spec: PositionSpec, ctx: ForwardContext, what: str) -> torch.Tensor:
    """``value [batch, pos, ...]`` -> ``[batch, k, ...]``: the ``k`` cells ``spec`` selects in every row.

    Recorders (``Cache``, lens readouts) need a rectangular result, so every row must select the
    same number of tokens; ``what`` names the caller in the error.
    """
    mask = position_mask(spec, ctx)
    counts = mask.sum(1)
    if counts.numel() and bool((counts != counts[0]).any()):
        raise InputError(f"{what} positions {spec!r} select {counts.tolist()} tokens per row; it needs the same "
                         "number in every row (or positions=None).")
    return value[mask].reshape(mask.shape[0], -1, *value.shape[2:])
