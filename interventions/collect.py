"""Batched activation collection: the one way clients read activations of many prompts.

Steering vectors, reading vectors, lens training and probes all read activations through
:func:`collect_activations` (one token per prompt, batched, progress bar) or :func:`run_readings`
(every token of fixed-length chunks plus the model's logits).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence, Union

import torch

from .cache import Cache
from .errors import InputError
from .progress import bar_disable
from .specs import Prompts, as_prompt_list

if TYPE_CHECKING:
    from .model import HookedModel

#: Which token of each prompt: an index (negative from the end), ``"mean"`` over real tokens, or None.
TokenSpec = Union[None, int, str]


def validate_token(token: TokenSpec, lengths: list[int], label: str) -> None:
    """Raise a clear error when an int token index falls outside one of the prompts."""
    if token is None or token == "mean":
        return
    if isinstance(token, bool) or not isinstance(token, int):
        raise InputError(f"token must be an int index (negative counts from the end) or 'mean', got {token!r}.")
    for i, n in enumerate(lengths):
        if not -n <= token < n:
            raise InputError(f"token={token} is outside {label} prompt {i}, which has {n} tokens "
                             f"(valid: 0..{n - 1} or -{n}..-1).")


#: a token whose residual norm exceeds this multiple of its prompt's median norm is an outlier (attention sink)
OUTLIER_FACTOR = 3.0


def inlier_mask(values: torch.Tensor, mask: torch.Tensor, factor: float | None = OUTLIER_FACTOR) -> torch.Tensor:
    """``[batch, pos]`` bool: real tokens whose norm is at most ``factor`` x their row's median real-token norm.

    ``values`` is ``[batch, pos, d]``, ``mask`` the ``[batch, pos]`` attention mask. ``factor=None`` keeps every
    real token. A row keeps at least its smallest-norm token, so no prompt is ever left empty.
    """
    real = mask.bool()
    if factor is None:
        return real
    norms = values.float().norm(dim=-1)
    keep = torch.zeros_like(real)
    for i in range(norms.shape[0]):
        row = norms[i][real[i]]
        if row.numel() == 0:
            continue
        limit = factor * row.median()
        keep[i] = real[i] & (norms[i] <= limit)
    return keep


def masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``[batch, d]`` float32 mean of ``values [batch, pos, d]`` over the positions ``keep [batch, pos]`` selects."""
    w = keep.to(values.device, torch.float32)[..., None]
    return (values.float() * w).sum(1) / w.sum(1).clamp_min(1.0)



class NormTally:
    """Running mean of each site's residual norm over real tokens, outlier tokens (:func:`inlier_mask` with
    ``factor``) left out: the typical norm a steering scale is measured in. Fed batch by batch from caches that
    hold every position, so it costs no forward of its own."""

    def __init__(self, sites: Sequence[str], factor: float | None = OUTLIER_FACTOR) -> None:
        self.factor = factor
        self.total = {s: 0.0 for s in sites}
        self.count = {s: 0 for s in sites}
        self.dropped = {s: 0 for s in sites}

    def add(self, site: str, values: torch.Tensor, mask: torch.Tensor) -> None:
        """Count ``values [batch, pos, d]`` of ``site`` at the real tokens of ``mask [batch, pos]``."""
        mask = mask.to(values.device)
        keep = inlier_mask(values, mask, self.factor)
        self.total[site] += float(values.float().norm(dim=-1)[keep].sum())
        self.count[site] += int(keep.sum())
        self.dropped[site] += int(mask.bool().sum()) - int(keep.sum())

    def result(self) -> tuple[dict[str, float], dict[str, int]]:
        """``(site -> typical norm, site -> tokens left out as outliers)``."""
        return {s: self.total[s] / max(self.count[s], 1) for s in self.total}, dict(self.dropped)


def collect_activations(model: HookedModel, prompts: Prompts, sites: list[str], token: int | str = -1,
                        batch_size: int = 16, progress: bool | None = None, desc: str = "activations",
                        outliers: float | None = None, norms: NormTally | None = None) -> dict[str, torch.Tensor]:
    """Activations of ``prompts`` at one token (or averaged over real tokens with ``token="mean"``).

    With ``token="mean"`` and ``outliers=f``, tokens whose norm exceeds ``f`` x their prompt's median norm at
    that site (the attention-sink first token, ~5x the others on SmolLM2) are left out of the average
    (:func:`inlier_mask`); ``None`` averages every real token.

    One ``model.run`` with a ``Cache(sites, positions=token)`` per batch; returns
    site -> ``[n_prompts, d]`` float32 on the CPU. ``progress`` shows a tqdm bar
    (default: when there is more than one batch). ``norms``: a :class:`NormTally` over ``sites`` that the same
    forwards also feed (every position is then cached).
    """
    items = as_prompt_list(prompts, "prompts")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    n_batches = (len(items) + batch_size - 1) // batch_size
    show = n_batches > 4 if progress is None else progress
    from tqdm.auto import tqdm

    chunks: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    for start in tqdm(range(0, len(items), batch_size), total=n_batches, desc=desc, disable=bar_disable(show),
                      leave=False):
        batch = model.tokenize(items[start:start + batch_size])
        lengths = batch.lengths.tolist()
        validate_token(token, lengths, f"the batch starting at {start}:")
        every = Cache(sites) if token == "mean" or norms is not None else None
        one = Cache(sites, positions=token) if token != "mean" else None
        model.run(batch, [c for c in (every, one) if c is not None])
        for s in sites:
            if every is not None and norms is not None:
                norms.add(s, every.cache[s], batch.attention_mask)
            if one is not None:
                chunks[s].append(one.cache[s][:, 0].float().cpu())
            else:
                v = every.cache[s]  # type: ignore[union-attr]
                keep = inlier_mask(v, batch.attention_mask.to(v.device), outliers)
                chunks[s].append(masked_mean(v, keep).cpu())
    return {s: torch.cat(c) for s, c in chunks.items()}


def run_readings(model: HookedModel, ids: torch.Tensor, sites: Sequence[str],
                 ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One frozen forward over unpadded token ids ``[B, T]``: float32 values ``[B*T, d]`` of every site
    (in order) and the model's own logits ``[B*T, V]`` (float32)."""
    out = model.run(ids, [Cache(list(sites))])
    hs = [out.cache[name].reshape(-1, model.d_model).float() for name in sites]
    return hs, out.logits.reshape(-1, out.logits.shape[-1]).float()


def rows_of(positions: TokenRows, length: int, prompt: int) -> list[int]:
    """Token indices one prompt contributes for a dataset positions spec (see :data:`TokenRows`)."""
    if positions == "all":
        return list(range(length))
    if positions == "last":
        positions = -1
    if isinstance(positions, slice):
        idx = list(range(length))[positions]
        if not idx:
            raise InputError(f"Span {positions} selects no token of prompt {prompt} ({length} tokens).")
        return idx
    if isinstance(positions, int) and not isinstance(positions, bool):
        if not -length <= positions < length:
            raise InputError(f"Position {positions} is outside prompt {prompt}, which has {length} tokens "
                             f"(valid: 0..{length - 1} or -{length}..-1).")
        return [positions % length]
    raise InputError(f"Cannot read positions {positions!r}: use 'last', 'all', an int, a slice (span) or one "
                     "int per prompt.")


#: Which tokens of each prompt a dataset keeps: "last", "all", an int, a slice (span), or a list with one
#: int per prompt.
TokenRows = Union[str, int, slice, Sequence[int]]


def collect_rows(model: HookedModel, prompts: list[Any], sites: Sequence[str], rows: list[list[int]],
                 dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One batched forward over ``prompts``: the chosen token rows of every site and their token ids.

    ``rows[i]`` are the token indices (no padding, 0-based) kept from prompt ``i``. Returns
    site -> ``[sum(len(r)), d]`` (prompt-major, CPU, ``dtype``) and the token ids ``[sum(len(r))]``.
    When every prompt keeps the same number of tokens the ``Cache`` gathers them inside the forward
    (nothing else is retained); otherwise the padded values are indexed after it.
    """
    batch = model.tokenize(prompts)
    pad_left = (batch.attention_mask.shape[1] - batch.lengths).tolist()
    same = len({len(r) for r in rows}) == 1
    res = model.run(batch, [Cache(list(sites), positions=[list(r) for r in rows] if same else None)])
    col_r = [i for i, r in enumerate(rows) for _ in r]
    col_c = [pad_left[i] + t for i, r in enumerate(rows) for t in r]
    out: dict[str, torch.Tensor] = {}
    for s in sites:
        v = res.cache[s]
        v = v.flatten(0, 1) if same else v[col_r, col_c]
        out[s] = v.reshape(v.shape[0], -1).to("cpu", dtype)
    return out, batch.input_ids[col_r, col_c].cpu()
