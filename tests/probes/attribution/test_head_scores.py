"""Head summary scores: each kind equals a by-hand loop over the cached patterns, and synthetic patterns (forced
with ``Edit`` on ``attn_pattern``) score exactly 1 for their own kind."""

from __future__ import annotations

import math

import pytest
import torch

from lmscope.interventions import Cache, Edit, HookedModel
from lmscope.interventions.errors import InputError, SiteError
from lmscope.probes.attribution import head_scores, head_scores_by_kind, pattern_scores, repeated_tokens

# repeats: 17 at 1 and 4, 42 at 2 and 6 (so 4's induction key is 2, 6's is 3), 8 twice in a row at 7, 8
PROMPTS = [[3, 17, 42, 9, 17, 55, 42, 8, 8], [21, 5, 21, 5, 13]]
KINDS = ("previous-token", "duplicate-token", "induction")


def by_hand(model: HookedModel, prompts: list[list[int]], kind: str, layer: int) -> list[float]:
    """The module docstring's definitions, one prompt at a time (no padding), with plain loops."""
    mass, count = [0.0] * model.n_heads, 0
    for ids in prompts:
        pattern = model.run([ids], [Cache(f"attn_pattern.{layer}")]).cache[f"attn_pattern.{layer}"][0]
        for q in range(len(ids)):
            if kind == "previous-token":
                keys = {q - 1} if q >= 1 else set()
            elif kind == "duplicate-token":
                keys = {k for k in range(q) if ids[k] == ids[q]}
            else:
                keys = {k + 1 for k in range(q) if ids[k] == ids[q]}
            if keys:
                count += 1
                for h in range(model.n_heads):
                    mass[h] += sum(float(pattern[h, q, k]) for k in keys)
    return [m / count for m in mass]


@pytest.mark.parametrize("kind", KINDS)
def test_scores_equal_the_definition_computed_by_hand(llama_tiny: HookedModel, kind: str) -> None:
    scores = head_scores(llama_tiny, PROMPTS, kind)  # one padded batch of two lengths
    assert scores.shape == (llama_tiny.n_layers, llama_tiny.n_heads) and scores.dtype == torch.float32
    for layer in range(llama_tiny.n_layers):
        assert scores[layer].tolist() == pytest.approx(by_hand(llama_tiny, PROMPTS, kind, layer), abs=1e-6)
    assert bool(((scores >= 0) & (scores <= 1)).all())
    assert torch.equal(head_scores(llama_tiny, PROMPTS, kind, layers=[-1]), scores[-1:])
    assert torch.equal(head_scores_by_kind(llama_tiny, PROMPTS, KINDS)[kind], scores)  # one forward, every kind


def test_the_induction_keys_of_the_example_prompt() -> None:
    """Position 4 (17, first seen at 1) reads key 2; 6 (42, seen at 2) reads 3; 8 (8 right after 8) reads itself."""
    ids = torch.tensor(PROMPTS[0])
    n = len(ids)
    pattern = torch.zeros(1, n, n)
    pattern[0, 4, 2] = pattern[0, 6, 3] = pattern[0, 8, 8] = 1.0
    assert pattern_scores(pattern, ids, "induction").tolist() == [1.0]
    assert pattern_scores(pattern, ids, "duplicate-token").tolist() == [0.0]  # 4->1, 6->2, 8->7 have no mass
    pattern[0, 8, 8], pattern[0, 8, 7] = 0.0, 1.0
    assert pattern_scores(pattern, ids, "induction").tolist() == [pytest.approx(2 / 3)]
    assert pattern_scores(pattern, ids, "duplicate-token").tolist() == [pytest.approx(1 / 3)]
    assert pattern_scores(pattern, ids, "previous-token").tolist() == [pytest.approx(1 / 8)]  # only 8 -> 7


def _forced(layer: int, build: object) -> Edit:
    """``attn_pattern.layer`` replaced, for every head, by ``build(T)`` (a [T, T] pattern)."""
    def fn(value: torch.Tensor) -> torch.Tensor:
        pattern = build(value.shape[-1]).to(value)  # type: ignore[operator]
        return pattern.expand_as(value).contiguous()
    return Edit(f"attn_pattern.{layer}", fn)


def _previous_pattern(n: int) -> torch.Tensor:
    p = torch.zeros(n, n)
    p[0, 0] = 1.0
    p[torch.arange(1, n), torch.arange(0, n - 1)] = 1.0
    return p


def test_a_forced_previous_token_pattern_scores_one(llama_tiny: HookedModel) -> None:
    ids = [[3, 17, 42, 9, 55, 8]]  # no repeats: duplicate and induction scores are undefined (NaN)
    with llama_tiny.apply(_forced(1, _previous_pattern)):
        prev = head_scores(llama_tiny, ids, "previous-token")
        dup = head_scores(llama_tiny, ids, "duplicate-token")
    assert prev[1].tolist() == [1.0] * llama_tiny.n_heads
    assert bool((prev[[0, 2]] < 1).all())  # the other layers keep their own (random) patterns
    assert all(math.isnan(x) for x in dup.flatten().tolist())


def test_a_forced_induction_pattern_scores_one_on_repeated_tokens(llama_tiny: HookedModel) -> None:
    n = 6
    seqs = repeated_tokens(llama_tiny, length=n, batch=3, seed=1)
    assert [len(s) for s in seqs] == [2 * n] * 3  # the tiny model has no tokenizer: no BOS

    def induction(size: int) -> torch.Tensor:
        p = torch.eye(size)
        for q in range(n, size):  # second copy: the token after the first occurrence, n - 1 back
            p[q, q], p[q, q - n + 1] = 0.0, 1.0
        return p

    def duplicate(size: int) -> torch.Tensor:
        p = torch.eye(size)
        for q in range(n, size):
            p[q, q], p[q, q - n] = 0.0, 1.0
        return p

    with llama_tiny.apply(_forced(2, induction)):
        assert head_scores(llama_tiny, seqs, "induction")[2].tolist() == [1.0] * llama_tiny.n_heads
        assert head_scores(llama_tiny, seqs, "duplicate-token")[2].tolist() == [0.0] * llama_tiny.n_heads
    with llama_tiny.apply(_forced(2, duplicate)):
        assert head_scores(llama_tiny, seqs, "duplicate-token")[2].tolist() == [1.0] * llama_tiny.n_heads
        assert head_scores(llama_tiny, seqs, "induction")[2].tolist() == [0.0] * llama_tiny.n_heads


def test_repeated_tokens_are_seeded_distinct_and_doubled(llama_tiny: HookedModel) -> None:
    a, b = repeated_tokens(llama_tiny, 10, 2, seed=0), repeated_tokens(llama_tiny, 10, 2, seed=0)
    assert a == b and a != repeated_tokens(llama_tiny, 10, 2, seed=1)
    for seq in a:
        assert seq[:10] == seq[10:] and len(set(seq[:10])) == 10
        assert all(0 <= i < llama_tiny.d_vocab for i in seq)


@pytest.mark.parametrize("call, error, message", [
    (lambda m: head_scores(m, PROMPTS, "induction-ish"), InputError, "kind must be one of 'previous-token'"),
    (lambda m: head_scores(m, PROMPTS, layers=[7]), SiteError, "Layer 7 is out of range"),
    (lambda m: repeated_tokens(m, length=0), InputError, "length must be a positive int"),
    (lambda m: repeated_tokens(m, length=500), InputError, "the vocabulary has only"),
])
def test_bad_requests_say_what_is_allowed(llama_tiny: HookedModel, call: object, error: type[Exception],
                                          message: str) -> None:
    with pytest.raises(error, match=message):
        call(llama_tiny)  # type: ignore[operator]


@pytest.mark.slow
def test_smollm_has_induction_heads_on_repeated_tokens(smollm: HookedModel) -> None:
    """A real model's repeated-token sequences start with its BOS, and some head is a strong induction head."""
    seqs = repeated_tokens(smollm, length=20, batch=2)
    bos = smollm.tokenizer.bos_token_id
    assert all(s[0] == bos for s in seqs) if bos is not None else all(len(s) == 40 for s in seqs)
    scores = head_scores(smollm, seqs, "induction")
    assert float(scores.max()) > 0.5
