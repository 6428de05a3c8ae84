"""Per-head attention summary scores: previous-token, duplicate-token and induction heads.

Each score is the attention mass a head puts on a set of *key* positions chosen for each *query* position from
the tokens alone, averaged over the query positions where that set is not empty (pooled over every prompt's
real tokens; padding never counts). With ``A[q, k]`` a head's attention pattern (the ``attn_pattern.L`` site,
softmax probabilities, rows summing to 1) and ``t[i]`` the token id at position ``i`` of one prompt:

- ``"previous-token"``: keys ``{q - 1}`` for every ``q >= 1``; the score is the mean of ``A[q, q - 1]``.
- ``"duplicate-token"``: keys ``{k < q : t[k] = t[q]}`` (earlier occurrences of the query's own token); the
  score is the mean over queries that have one of ``Σ_k A[q, k]`` over those keys.
- ``"induction"``: keys ``{k + 1 : k < q, t[k] = t[q]}`` (the token *after* each earlier occurrence of the query's
  token: the one an induction head copies); the mean over queries that have one of the mass on those keys.

A score is NaN where no query of the prompts qualifies (no repeated token: no duplicate or induction score).
Every score is in ``[0, 1]``: 1 means the head attends only to its set. Induction heads are found, as
TransformerLens does, on a sequence of random tokens repeated twice (:func:`repeated_tokens`: a BOS when the
tokenizer has one, then ``r``, then ``r`` again, ``r`` drawn without repeats): in its second half every query's
induction key is the token after its first occurrence, ``len(r) - 1`` positions back.

:func:`pattern_scores` computes a score from a pattern already at hand (``lmscope serve`` does, on the pattern it
draws); :func:`head_scores` runs the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.specs import LayerSpec, resolve_layers

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


def _previous(ids: torch.Tensor) -> torch.Tensor:
    n = ids.shape[0]
    return torch.eye(n, dtype=torch.bool, device=ids.device).roll(-1, dims=1).tril(-1)


def _duplicate(ids: torch.Tensor) -> torch.Tensor:
    same = ids[:, None] == ids[None, :]
    return same.tril(-1)


def _induction(ids: torch.Tensor) -> torch.Tensor:
    dup = _duplicate(ids)  # [q, k]: k < q with the same token
    keys = torch.zeros_like(dup)
    keys[:, 1:] = dup[:, :-1]  # the key after each earlier occurrence (k + 1 <= q since k < q)
    return keys


#: kind -> the [query, key] bool mask of the keys each query's score counts, from one prompt's token ids
KEY_SETS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "previous-token": _previous, "duplicate-token": _duplicate, "induction": _induction}
KINDS = tuple(KEY_SETS)


def check_kind(kind: str) -> None:
    if kind not in KEY_SETS:
        raise InputError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}.")


def pattern_mass(pattern: torch.Tensor, ids: torch.Tensor, kind: str) -> tuple[torch.Tensor, int]:
    """``(Σ over qualifying queries of the mass on their keys [heads], number of qualifying queries)`` for one
    prompt: ``pattern [heads, T, T]`` over its real tokens, ``ids [T]`` its token ids."""
    check_kind(kind)
    keys = KEY_SETS[kind](ids.to(pattern.device))
    if tuple(pattern.shape[-2:]) != tuple(keys.shape):
        raise InputError(f"The pattern covers {tuple(pattern.shape[-2:])} query x key positions but the prompt has "
                         f"{ids.shape[0]} tokens.")
    mass = torch.einsum("hqk,qk->h", pattern.float(), keys.float())
    return mass.cpu(), int(keys.any(1).sum())


def pattern_scores(pattern: torch.Tensor, ids: torch.Tensor, kind: str) -> torch.Tensor:
    """The ``kind`` score ``[heads]`` of one prompt's pattern ``[heads, T, T]`` (``ids [T]``; NaN when no query
    qualifies). See the module docstring."""
    mass, count = pattern_mass(pattern, ids, kind)
    return mass / count if count else torch.full_like(mass, float("nan"))


def head_scores(model: HookedModel, prompts: Any, kind: str = "previous-token",
                layers: LayerSpec = None) -> torch.Tensor:
    """The ``kind`` score of every head: ``[layers, n_heads]`` float32 on the CPU (the chosen ``layers``, all by
    default, in order), pooled over the real tokens of ``prompts`` (a string, token ids, or a list of either).

    One forward with a ``Cache`` of ``attn_pattern`` at those layers (under any session the caller has open, so
    ablations and steering show). ``kind`` is ``"previous-token"``, ``"duplicate-token"`` or ``"induction"``
    (definitions in the module docstring; run induction on :func:`repeated_tokens`).
    """
    return head_scores_by_kind(model, prompts, (kind,), layers)[kind]


def head_scores_by_kind(model: HookedModel, prompts: Any, kinds: Sequence[str] = KINDS,
                        layers: LayerSpec = None) -> dict[str, torch.Tensor]:
    """:func:`head_scores` of several kinds from one forward: ``kind -> [layers, n_heads]``."""
    for kind in kinds:
        check_kind(kind)
    if "attn_pattern" not in model.available_kinds:
        raise InputError("head_scores reads attention patterns (attn_pattern), which this architecture does not "
                         "expose (its attention computes the probabilities inline, e.g. Falcon with ALiBi).")
    chosen = resolve_layers(model, layers)
    res = model.run(prompts, [Cache([f"attn_pattern.{layer}" for layer in chosen])])
    mask = res.batch.attention_mask.bool()
    mass = {kind: torch.zeros(len(chosen), model.n_heads) for kind in kinds}
    count = dict.fromkeys(kinds, 0)
    for b in range(mask.shape[0]):
        real = mask[b].nonzero()[:, 0]
        ids = res.batch.input_ids[b, real]
        for row, layer in enumerate(chosen):
            pattern = res.cache[f"attn_pattern.{layer}"][b][:, real][:, :, real]
            for kind in kinds:
                m, c = pattern_mass(pattern, ids, kind)
                mass[kind][row] += m
                count[kind] += c if row == 0 else 0
    return {kind: mass[kind] / count[kind] if count[kind] else torch.full_like(mass[kind], float("nan"))
            for kind in kinds}


def repeated_tokens(model: HookedModel, length: int = 20, batch: int = 4, seed: int = 0) -> list[list[int]]:
    """``batch`` token-id prompts ``[BOS] + r + r``: ``r`` is ``length`` distinct random token ids (seeded; no
    special tokens), the BOS only when the tokenizer has one. The sequences TransformerLens finds induction heads
    on (``generate_repeated_tokens``)."""
    for name, value in (("length", length), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive int, got {value!r}.")
    tok = model.tokenizer
    rows = getattr(model.module(model.arch.embed), "num_embeddings", None) or model.d_vocab
    vocab = min(model.d_vocab, int(rows))
    special = set(getattr(tok, "all_special_ids", None) or []) if tok is not None else set()
    allowed = torch.tensor([i for i in range(vocab) if i not in special])
    if allowed.numel() < length:
        raise InputError(f"length={length} distinct tokens: the vocabulary has only {allowed.numel()} usable ids.")
    gen = torch.Generator().manual_seed(seed)
    bos = getattr(tok, "bos_token_id", None) if tok is not None else None
    out = []
    for _ in range(batch):
        r = allowed[torch.randperm(allowed.numel(), generator=gen)[:length]].tolist()
        out.append(([bos] if bos is not None else []) + r + r)
    return out
