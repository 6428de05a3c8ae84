"""lmscope.lens.metrics against the textbook formulas (torch.nn.functional / torch.distributions)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical

from lmscope.lens.lenses import Unembedding
from lmscope.lens.metrics import (
    bits_per_byte,
    cross_entropy_from_logits,
    entropy_from_logprobs,
    kl_from_logprobs,
    log_probs,
    logit_stats,
    rowdot,
    target_stats,
)

N, V = 7, 53


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    final = torch.randn(N, V, generator=g) * 4
    lens = torch.randn(2, N, V, generator=g) * 3  # two lenses on the same tokens
    nxt = torch.randint(0, V, (N,), generator=g)
    return final, lens, nxt


def reference(final: torch.Tensor, lens: torch.Tensor, nxt: torch.Tensor) -> dict[str, torch.Tensor]:
    logp, logq = F.log_softmax(final, -1), F.log_softmax(lens, -1)
    kl = torch.stack([F.kl_div(q, logp, log_target=True, reduction="none").sum(-1) for q in logq])
    ce = torch.stack([F.cross_entropy(z, nxt, reduction="none") for z in lens])
    return {"kl": kl, "entropy": Categorical(logits=lens).entropy(), "ce": ce}


def test_target_stats(logits) -> None:
    final, _, _ = logits
    t = target_stats(final)
    torch.testing.assert_close(t.p, final.softmax(-1))
    torch.testing.assert_close(t.entropy, Categorical(logits=final).entropy())


def test_logprob_forms_match_reference(logits) -> None:
    final, lens, nxt = logits
    ref = reference(final, lens, nxt)
    target, logq = target_stats(final), log_probs(lens)
    torch.testing.assert_close(kl_from_logprobs(target, logq), ref["kl"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy_from_logprobs(logq), ref["entropy"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cross_entropy_from_logits(lens[0], nxt), ref["ce"][0])
    torch.testing.assert_close(rowdot(lens, lens), (lens * lens).sum(-1))
    assert kl_from_logprobs(target, log_probs(final)).abs().max() < 1e-5  # KL(p || p) = 0


@pytest.mark.parametrize("cols", [1, 5, 16, V, 1000])
def test_streamed_blocks_match_reference(logits, cols: int) -> None:
    final, lens, nxt = logits
    ref = reference(final, lens, nxt)
    blocks = (lens[..., s:s + cols] for s in range(0, V, cols))
    got = logit_stats(blocks, target_stats(final), nxt)
    for name in ("kl", "entropy", "ce"):
        assert getattr(got, name).dtype == torch.float64
        torch.testing.assert_close(getattr(got, name).float(), ref[name], rtol=1e-5, atol=1e-5)


def test_streamed_peaked_distribution_is_not_nan() -> None:
    z = torch.full((1, 10), -1e4)
    z[0, 3] = 1e4  # one block's max far above the others': the running rescale underflows to 0, never NaN
    got = logit_stats((z[:, s:s + 2] for s in range(0, 10, 2)), target_stats(z), torch.tensor([3]))
    assert float(got.kl[0]) == 0.0 and float(got.entropy[0]) == 0.0 and abs(float(got.ce[0])) < 1e-6
    with pytest.raises(ValueError):
        logit_stats(iter(()), target_stats(z), torch.tensor([3]))


def test_unembedding_blocks_equal_decode_hidden(tiny) -> None:
    """Streamed blocks of every architecture (biases, soft-capping, tied weights) == the model's own decoder."""
    torch.manual_seed(0)
    h = torch.randn(2, 5, tiny.d_model)
    full = tiny.decode_hidden(h).float()
    got = torch.cat(list(Unembedding(tiny).blocks(h, 7)), dim=-1)
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)


def test_bits_per_byte() -> None:
    assert bits_per_byte(math.log(2) * 10, 5) == pytest.approx(2.0)
    assert bits_per_byte(1.0, 0) == pytest.approx(1 / math.log(2))  # no bytes: guarded, never a division by 0
    torch.testing.assert_close(bits_per_byte(torch.tensor([math.log(2)]), 2), torch.tensor([0.5]))
