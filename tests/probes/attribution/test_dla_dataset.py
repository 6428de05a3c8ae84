"""DLA over a dataset: one padded batch gives every prompt's terms as attribute() on that prompt alone does (padding
changes nothing), with mean ± standard error per term; positions= decomposes another token (as if the prompt ended
there)."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import skip_lazy_miscompute

from lmscope.interventions import HookedModel
from lmscope.interventions.errors import InputError
from lmscope.probes.attribution import Attribution, DatasetAttribution, attribute

PROMPTS = [[3, 17, 42, 8, 55, 21], [9, 4], [30, 12, 77, 5, 61, 2, 19, 44, 8], [7, 7, 7, 50]]  # padded 4..7 tokens
TARGETS, CONTRASTS = [11, 30, 5, 60], [30, None, 11, 2]
SCALARS = ("logit", "embed", "constant")
TENSORS = ("attn", "attn_bias", "heads", "mlp")


def _same_terms(a: Attribution, b: Attribution, rtol: float = 1e-4, atol: float = 2e-5) -> None:
    for name in SCALARS:
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=rtol, abs=atol), name
    for name in TENSORS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=rtol, atol=atol, equal_nan=True)


def _same(a: Attribution, b: Attribution, rtol: float = 1e-4, atol: float = 2e-5) -> None:
    _same_terms(a, b, rtol, atol)
    assert (a.target, a.contrast, a.tokens, a.notes, a.labels) == (b.target, b.contrast, b.tokens, b.notes, b.labels)
    assert (a.head_positions is None) == (b.head_positions is None)
    if a.head_positions is not None and b.head_positions is not None:
        torch.testing.assert_close(a.head_positions, b.head_positions, rtol=rtol, atol=atol)


def test_a_batched_dataset_equals_each_prompt_alone_on_every_architecture(tiny: HookedModel) -> None:
    """Prompts of 2 to 9 tokens in one left-padded batch, each with its own target and contrast: every prompt's
    terms (per head, per position too) equal attribute() on that prompt alone."""
    skip_lazy_miscompute(tiny, "DLA")
    data = attribute(tiny, PROMPTS, TARGETS, CONTRASTS)
    assert isinstance(data, DatasetAttribution) and data.n_prompts == len(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        alone = attribute(tiny, prompt, TARGETS[i], CONTRASTS[i])
        assert isinstance(alone, Attribution) and data.per_prompt[i].position == len(prompt) - 1 == alone.position
        _same(data.per_prompt[i], alone)
        assert data.per_prompt[i].prompt == prompt


def test_mean_and_standard_error_per_term(llama_tiny: HookedModel) -> None:
    data = attribute(llama_tiny, PROMPTS, 11, contrast=30, per_position=False)
    stacked = torch.stack([a.heads for a in data.per_prompt])
    torch.testing.assert_close(data.heads, stacked.mean(0))
    torch.testing.assert_close(data.stderr("heads"), stacked.std(0) / len(PROMPTS) ** 0.5)
    logits = torch.tensor([a.logit for a in data.per_prompt])
    assert data.logit == pytest.approx(float(logits.mean()), abs=1e-6)
    assert data.total == pytest.approx(data.logit, abs=1e-4)  # the mean terms still sum to the mean logit
    terms, errs = data.terms(), data.terms_stderr()
    assert terms.keys() == errs.keys() == data.per_prompt[0].terms().keys()
    for name in ("L1H2", "mlp.0", "embed"):
        values = torch.tensor([a.terms()[name] for a in data.per_prompt])
        assert terms[name] == pytest.approx(float(values.mean()), abs=1e-6)
        assert errs[name] == pytest.approx(float(values.std() / 2), abs=1e-6)
    top = data.top(4)
    assert [abs(m) for _, m, _ in top] == sorted((abs(v) for v in terms.values()), reverse=True)[:4]
    assert all(errs[name] == e for name, _, e in top)
    assert data.labels == (data.per_prompt[0].labels[0], data.per_prompt[0].labels[1])
    one = attribute(llama_tiny, PROMPTS[:1], 11, per_position=False)  # a list of one prompt is a dataset of one
    assert isinstance(one, DatasetAttribution) and torch.isnan(one.stderr("mlp")).all()
    assert one.terms_stderr().keys() == one.terms().keys()  # a NaN error is still named as its term
    name, mean, err = one.top(1)[0]
    assert name in one.terms() and mean == one.terms()[name] and math.isnan(err)


def test_positions_decompose_the_logit_of_an_earlier_token(llama_tiny: HookedModel) -> None:
    """Causal attention: the terms at token p equal those of the prompt cut after p; heads read no later key."""
    positions = [2, 0, -3, 1]
    data = attribute(llama_tiny, PROMPTS, TARGETS, CONTRASTS, positions=positions)
    for i, (prompt, p) in enumerate(zip(PROMPTS, positions)):
        p %= len(prompt)
        cut = attribute(llama_tiny, prompt[:p + 1], TARGETS[i], CONTRASTS[i])
        got = data.per_prompt[i]
        assert got.position == p and got.tokens[:p + 1] == cut.tokens
        assert got.head_positions is not None and cut.head_positions is not None
        torch.testing.assert_close(got.head_positions[..., :p + 1], cut.head_positions, rtol=1e-4, atol=2e-5)
        assert float(got.head_positions[..., p + 1:].abs().sum()) == 0.0  # (empty for the last token)
        _same_terms(got, cut)
        assert (got.target, got.contrast, got.notes) == (cut.target, cut.contrast, cut.notes)
    single = attribute(llama_tiny, PROMPTS[0], 11, positions=2)
    assert isinstance(single, Attribution) and single.position == 2
    _same_terms(single, attribute(llama_tiny, PROMPTS[0][:3], 11))


def test_bad_dataset_requests(llama_tiny: HookedModel) -> None:
    with pytest.raises(InputError, match="target is a list of 3 tokens but there are 4 prompts"):
        attribute(llama_tiny, PROMPTS, [1, 2, 3])
    with pytest.raises(InputError, match="Position 4 is outside prompt 1's 2 tokens"):
        attribute(llama_tiny, PROMPTS, 1, positions=[0, 4, 0, 0])
    with pytest.raises(InputError, match="Position 5 is outside prompt 3's 4 tokens"):  # counted over the dataset
        attribute(llama_tiny, PROMPTS, 1, positions=[0, 0, 0, 5], batch_size=2)
    with pytest.raises(InputError, match="batch_size must be a whole number of prompts"):
        attribute(llama_tiny, PROMPTS, 1, batch_size=0)
    with pytest.raises(InputError, match="positions is a list of 2 but there are 4 prompts"):
        attribute(llama_tiny, PROMPTS, 1, positions=[0, 1])
    with pytest.raises(InputError, match="outside the vocabulary"):
        attribute(llama_tiny, PROMPTS, [1, 2, 3, 10_000])


def test_batches_of_prompts_give_each_prompt_its_own_terms(llama_tiny: HookedModel) -> None:
    """batch_size only bounds the memory: each prompt's terms (and per-position split) are those of one batch."""
    whole = attribute(llama_tiny, PROMPTS, TARGETS, CONTRASTS, positions=[2, 0, -3, 1])
    parts = attribute(llama_tiny, PROMPTS, TARGETS, CONTRASTS, positions=[2, 0, -3, 1], batch_size=3)
    assert parts.n_prompts == whole.n_prompts == len(PROMPTS)
    for a, b in zip(parts.per_prompt, whole.per_prompt):
        _same(a, b)
        assert a.position == b.position and a.head_positions is not None and b.head_positions is not None
        torch.testing.assert_close(a.head_positions, b.head_positions, rtol=1e-4, atol=2e-5)
