"""Lens evaluation (KL / CE / entropy, nats/token and bits/byte) and the train-lens / eval-lens CLI."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_models import build_tiny, on_device

from lmscope.interventions import Cache
from lmscope.interventions.errors import InputError
from lmscope.lens.lenses import LogitLens, TunedLens
from lmscope.lens.training.corpus import Corpus, model_tokenizer
from lmscope.lens.training.evaluate import evaluate_lens, plot_report, save_report

SEQ = 32


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    rng = random.Random(1)
    words = "a quick brown fox jumps over the lazy dog while seven cats watch from the old wall".split()
    root = tmp_path / "text"
    root.mkdir()
    for i in range(4):
        (root / f"d{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(300)))
    return root


def test_evaluate_finite_and_logit_exact_at_last(tiny, text_dir: Path, tmp_path: Path) -> None:
    lens = TunedLens(tiny)
    rep = evaluate_lens(lens, Corpus.from_sources(text_dir), max_tokens=3 * SEQ, seq_len=SEQ)
    assert set(rep["lenses"]) == {"logit", "tuned"} and rep["tokens"] == 3 * SEQ and rep["bytes"] == 3 * SEQ
    for name, r in rep["lenses"].items():
        for m in ("kl", "ce", "entropy"):
            for unit in ("nats_per_token", "bits_per_byte"):
                vals = r[m][unit]
                assert len(vals) == tiny.n_layers and all(math.isfinite(v) for v in vals), (name, m, unit)
        assert abs(r["kl"]["nats_per_token"][-1]) < 1e-5  # zero tuned lens == logit lens == model at the end
        assert abs(r["ce"]["nats_per_token"][-1] - rep["final"]["ce"]["nats_per_token"]) < 1e-4
    # bits/byte = nats/token / ln2 for byte tokens
    r = rep["lenses"]["logit"]["entropy"]
    assert abs(r["bits_per_byte"][0] - r["nats_per_token"][0] / math.log(2)) < 1e-6
    save_report(rep, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["readings"] == rep["readings"]
    png = plot_report(rep, tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logit_lens_alone(llama_tiny, text_dir: Path) -> None:
    rep = evaluate_lens(LogitLens(llama_tiny), text_dir, max_tokens=SEQ, seq_len=SEQ)
    assert list(rep["lenses"]) == ["logit"]


def test_cli_train_and_eval(llama_tiny, text_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lmscope.interventions.cli import main

    model_dir = tmp_path / "model"
    build_tiny("llama").cpu().save_pretrained(model_dir)  # llama_tiny's weights, saved from the CPU
    out = tmp_path / "lens"
    rc = main(["train-lens", str(text_dir), "--model", str(model_dir), "--out", str(out), "--steps", "2",
               "--tokens-per-step", str(2 * SEQ), "--seq-len", str(SEQ), "--init-tokens", str(4 * SEQ),
               "--checkpoint-every", "1", "--quiet"])
    assert rc == 0 and (out / "config.json").is_file() and (out / "lens.safetensors").is_file()
    assert (tmp_path / "lens.ckpt" / "state.json").is_file()
    lens = TunedLens.load(out, llama_tiny)
    assert lens.meta["training"]["steps"] == 2
    rc = main(["eval-lens", str(text_dir / "d0.txt"), "--model", str(model_dir), "--lens", str(out),
               "--max-tokens", str(2 * SEQ), "--seq-len", str(SEQ), "--json", str(tmp_path / "e.json"),
               "--plot", str(tmp_path / "e.png"), "--quiet"])
    assert rc == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert set(report["lenses"]) == {"logit", "tuned"} and (tmp_path / "e.png").stat().st_size > 1000
    assert "mean KL" in capsys.readouterr().out
    rc = main(["train-lens", str(tmp_path / "nothing*.txt"), "--model", str(model_dir), "--out", str(out)])
    assert rc == 2


def reference_sums(lenses: dict, corpus: Corpus, n_chunks: int) -> dict[str, dict[str, list[float]]]:
    """The straightforward evaluation: per lens and reading, full log-softmax and the textbook formulas."""
    model = next(iter(lenses.values())).model
    readings = next(iter(lenses.values())).readings
    sums = {n: {m: [0.0] * len(readings) for m in ("kl", "ce", "entropy")} for n in lenses}
    for chunk in itertools.islice(corpus.chunks(model_tokenizer(model), SEQ, batch_size=1), n_chunks):
        ids = on_device(torch.tensor(chunk))
        out = model.run(ids, [Cache(readings)])
        logp = F.log_softmax(out.logits[0].float(), -1)
        for name, ln in lenses.items():
            for i, r in enumerate(readings):
                logq = F.log_softmax(ln.logits(out.cache[r][0], i).float(), -1)
                sums[name]["kl"][i] += float(F.kl_div(logq, logp, log_target=True, reduction="sum"))
                sums[name]["entropy"][i] += float(torch.distributions.Categorical(logits=logq).entropy().sum())
                sums[name]["ce"][i] += float(F.cross_entropy(logq[:-1], ids[0, 1:], reduction="sum"))
    return sums


@torch.no_grad()
def test_evaluate_equals_reference(tiny, text_dir: Path) -> None:
    """Streamed, lens-batched evaluation == the per-lens, per-reading full-vocabulary reference."""
    torch.manual_seed(0)
    lens = TunedLens(tiny, sites="all")
    lens.weight.normal_(0, 0.05)
    lens.bias.normal_(0, 0.05)
    corpus = Corpus.from_sources(text_dir)
    rep = evaluate_lens(lens, corpus, max_tokens=2 * SEQ, seq_len=SEQ, progress=False)
    ref = reference_sums({"logit": LogitLens(tiny, sites="all"), "tuned": lens}, corpus, 2)
    for name in ("logit", "tuned"):
        for m in ("kl", "ce", "entropy"):
            count = 2 * (SEQ - 1) if m == "ce" else 2 * SEQ
            want = [v / count for v in ref[name][m]]
            assert rep["lenses"][name][m]["nats_per_token"] == pytest.approx(want, rel=1e-4, abs=1e-5), (name, m)


def test_eval_lens_max_tokens_below_the_default_seq_len(llama_tiny, text_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """``--max-tokens 32`` alone lowers the default --seq-len (512) to fit, with a note; an explicit --seq-len
    that does not fit is refused naming both flags and the value to pass."""
    from lmscope.interventions.cli import main

    model_dir = tmp_path / "model"
    build_tiny("llama").cpu().save_pretrained(model_dir)
    rc = main(["eval-lens", str(text_dir), "--model", str(model_dir), "--max-tokens", str(SEQ),
               "--json", str(tmp_path / "e.json"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"--seq-len {SEQ}" in err and "note:" in err
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["seq_len"] == SEQ and report["tokens"] == SEQ
    rc = main(["eval-lens", str(text_dir), "--model", str(model_dir), "--max-tokens", str(SEQ),
               "--seq-len", str(2 * SEQ), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--max-tokens ({SEQ}) must be at least --seq-len ({2 * SEQ})" in err
    assert f"--seq-len {SEQ} or lower" in err
    with pytest.raises(InputError, match=f"pass seq_len={SEQ} or lower"):
        evaluate_lens(LogitLens(llama_tiny), text_dir, max_tokens=SEQ, seq_len=2 * SEQ)
