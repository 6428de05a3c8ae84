"""Tuned-lens training: closed-form init, fused KL, KL reduction, checkpoints and exact resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tiny_models import on_device

from lmscope.lens.lenses import TunedLens, Unembedding
from lmscope.lens.metrics import target_stats
from lmscope.lens.training.checkpoint import STATE_JSON, STATE_TENSORS
from lmscope.lens.training.corpus import Corpus, CorpusExhaustedError
from lmscope.lens.training.evaluate import evaluate_lens
from lmscope.lens.training.fit import train_tuned_lens
from lmscope.lens.training.kernels import FusedKLFunction

SEQ = 32


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    rng = random.Random(0)
    words = "the cat sat on a mat and then it ran to the old house where seven dogs live".split()
    for i in range(6):
        (tmp_path / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(700)))
    return Corpus.from_sources(tmp_path, heldout_fraction=0.2)


def heldout_kl(lens: TunedLens, corpus: Corpus) -> float:
    return evaluate_lens(lens, corpus.heldout(), max_tokens=8 * SEQ, seq_len=SEQ,
                         compare_logit=False)["lenses"]["tuned"]["mean_kl"]


def test_fused_kl_matches_autograd(llama_tiny) -> None:
    torch.manual_seed(0)
    dec = Unembedding(llama_tiny)
    assert dec.fused
    n = on_device(torch.randn(10, llama_tiny.d_model)).requires_grad_()
    target = target_stats(on_device(torch.randn(10, llama_tiny.d_vocab)) * 3)
    p = target.p
    fused = FusedKLFunction.apply(n, dec.weight, dec.bias, p, target.plogp, 4)
    (g1,) = torch.autograd.grad(fused, n)
    logq = torch.log_softmax(n @ dec.weight.T, -1)
    ref = (p * (p.log() - logq)).sum()
    (g2,) = torch.autograd.grad(ref, n)
    assert torch.allclose(fused, ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-6)


def test_lstsq_init_beats_zero_and_steps_reduce_kl(llama_tiny, corpus: Corpus) -> None:
    zero = TunedLens(llama_tiny)
    kl0 = heldout_kl(zero, corpus)
    ls = train_tuned_lens(llama_tiny, corpus.train(), steps=0, seq_len=SEQ, tokens_per_step=SEQ,
                          init_tokens=40 * SEQ, progress=False)
    kl_ls = heldout_kl(ls, corpus)
    assert kl_ls < 0.7 * kl0
    assert torch.count_nonzero(ls.weight[-1]) == 0  # the last reading is exact already
    tuned = train_tuned_lens(llama_tiny, corpus.train(), steps=8, seq_len=SEQ, tokens_per_step=4 * SEQ,
                             init="zero", lr=3e-3, progress=False)
    assert heldout_kl(tuned, corpus) < kl0
    assert len(tuned.meta["training"]) > 0


def test_resume_equals_uninterrupted(llama_tiny, corpus: Corpus, tmp_path: Path) -> None:
    kw = dict(steps=5, seq_len=SEQ, tokens_per_step=2 * SEQ, init_tokens=6 * SEQ, lr=1e-2, progress=False)
    full = train_tuned_lens(llama_tiny, corpus.train(), **kw)

    class Stop(Exception):
        pass

    def interrupt(step: int, stats: dict) -> None:
        if step == 3:
            raise Stop

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Stop):
        train_tuned_lens(llama_tiny, corpus.train(), checkpoint_dir=ckpt, checkpoint_every=2, callback=interrupt,
                         **kw)
    files = sorted(p.name for p in ckpt.iterdir())
    assert files == sorted([STATE_TENSORS, STATE_JSON])
    meta = json.loads((ckpt / STATE_JSON).read_text())
    assert meta["step"] == 2 and meta["data_position"] == 6 + 2 * 2
    from safetensors.torch import load_file

    assert "lens.weight" in load_file(str(ckpt / STATE_TENSORS))
    resumed = train_tuned_lens(llama_tiny, corpus.train(), checkpoint_dir=ckpt, checkpoint_every=2, resume=True,
                               **kw)
    assert torch.allclose(resumed.weight, full.weight, rtol=0, atol=1e-6)
    assert torch.allclose(resumed.bias, full.bias, rtol=0, atol=1e-6)
    assert not torch.equal(full.weight, torch.zeros_like(full.weight))
    with pytest.raises(ValueError, match="different settings"):
        train_tuned_lens(llama_tiny, corpus.train(), checkpoint_dir=ckpt, checkpoint_every=2, resume=True,
                         **{**kw, "lr": 5e-2})


def test_running_out_of_data_raises(llama_tiny, corpus: Corpus) -> None:
    with pytest.raises(CorpusExhaustedError, match="Ran out of data"):
        train_tuned_lens(llama_tiny, corpus.heldout(), steps=500, seq_len=SEQ, tokens_per_step=64 * SEQ,
                         init="zero", progress=False)
