"""Held-out evaluation of lenses: per-reading KL to the final layer, cross-entropy and entropy.

For each reading, on the same tokens, we report (Belrose et al. 2023, §3):

* ``kl``: KL(final distribution || lens distribution), over every position;
* ``ce``: cross-entropy of the lens distribution against the real next token
  (positions 0..T-2 of each chunk);
* ``entropy``: entropy of the lens distribution;

each in nats/token and in bits/byte (total nats / ln 2 / bytes of the decoded
text of the evaluated tokens); the formulas live in :mod:`lmscope.lens.metrics`. The given
lens and the logit lens (same readings) are evaluated side by side from one frozen forward
per chunk, in one vocabulary projection per reading, so their numbers are directly comparable.
:func:`save_report` writes JSON; :func:`plot_report` a PNG.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from lmscope.interventions.collect import run_readings
from lmscope.interventions.errors import InputError
from lmscope.interventions.progress import bar_disable

from ..lenses import Unembedding
from ..metrics import LogitStats, bits_per_byte, cross_entropy_from_logits, logit_stats, target_stats, token_bytes
from .corpus import Corpus, as_corpus, model_tokenizer

if TYPE_CHECKING:
    from ..lenses import Lens

METRICS = ("kl", "ce", "entropy")
#: Elements of one ``[lenses, tokens, vocabulary block]`` logit block (float32: 8 MiB) on one thread: the
#: metrics are accumulated block by block while the block is in cache (measured 1.5x less CPU time than a
#: full-vocabulary pass). With several threads each block is a few parallel regions whose barriers cost
#: more than the cache saves on a busy machine (measured), so there one block spans the whole vocabulary.
BLOCK_ELEMENTS = 1 << 21


def _block_columns(rows: int, vocab: int) -> int:
    return max(128, BLOCK_ELEMENTS // rows) if torch.get_num_threads() == 1 else vocab


def evaluate_lens(lens: Lens, corpus: Corpus | str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                  max_tokens: int = 8192, seq_len: int = 512, compare_logit: bool = True,
                  split: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate ``lens`` (and the logit lens alongside it) on the first ``max_tokens`` tokens of ``corpus``.

    ``corpus`` is used as given (a :class:`~lmscope.lens.training.corpus.Corpus` or sources); ``split``
    restricts it (e.g. ``"heldout"``). Fewer tokens than ``max_tokens`` is allowed (with the
    count reported), but at least one full chunk is required. Returns a JSON-able dict:
    ``{"readings": [...], "lenses": {name: {metric: {"nats_per_token": [...], "bits_per_byte": [...]},
    "mean_kl": ...}}, "final": {...}, "tokens": N, "bytes": B, ...}``.

    Cost: every (lens, reading) pair projects every token onto the whole vocabulary, which dominates
    (SmolLM2: 2 lenses x 30 readings x 29 GFLOP per 512 tokens). The defaults (8,192 tokens, tuned and
    logit lens) take minutes on a 2-core CPU: 559 s (~15 tokens/s) before the metrics were streamed,
    which cut the CPU time by 1.45x on one thread (``benchmarks/RESULTS.md``), so expect ~6 minutes.
    ``compare_logit=False`` halves it and ``max_tokens`` scales it linearly. The progress bar (on by
    default) shows tokens/s.
    """
    from ..lenses import LogitLens

    if max_tokens < seq_len:
        raise InputError(f"max_tokens ({max_tokens}) must be at least seq_len ({seq_len}): raise max_tokens, or "
                         f"pass seq_len={max_tokens} or lower.")
    corpus = as_corpus(corpus, split)  # type: ignore[arg-type]
    lenses: dict[str, Lens] = {}
    if compare_logit and not isinstance(lens, LogitLens):
        lenses["logit"] = LogitLens(lens.model, sites=lens.site_kinds)
    lenses[lens.name if lens.name not in lenses else f"{lens.name}_2"] = lens
    totals = _Totals(list(lenses), lens.n_readings)
    t0 = time.perf_counter()
    tokenizer = model_tokenizer(lens.model)
    for chunk in _chunks(corpus, tokenizer, seq_len, max_tokens, progress):
        _score_chunk(list(lenses.values()), chunk, totals)
        totals.count(tokenizer, chunk[0])
    if totals.tokens == 0:
        raise InputError(f"The corpus {corpus.describe()} holds less than one chunk of {seq_len} tokens.")
    meta = {"readings": list(lens.readings), "tokens": totals.tokens, "bytes": totals.bytes, "seq_len": seq_len,
            "max_tokens": max_tokens, "corpus": corpus.describe(), "model": lens.model.arch.name,
            "seconds": round(time.perf_counter() - t0, 2)}
    return {**meta, **totals.report({name: ln.describe() for name, ln in lenses.items()})}


@dataclass
class _Totals:
    """Summed nats per lens, metric and reading (float64), and the token/byte counts they are divided by."""

    names: list[str]
    n_readings: int
    sums: dict[str, dict[str, torch.Tensor]] = field(init=False)
    final: dict[str, float] = field(default_factory=lambda: {"ce": 0.0, "entropy": 0.0})
    tokens: int = 0
    ce_tokens: int = 0
    bytes: int = 0
    ce_bytes: int = 0

    def __post_init__(self) -> None:
        self.sums = {n: {m: torch.zeros(self.n_readings, dtype=torch.float64) for m in METRICS} for n in self.names}

    def add(self, reading: int, stats: LogitStats) -> None:
        """Add one reading's per-token stats ``[n_lenses, tokens]`` (CE has no next token at the last one)."""
        for j, name in enumerate(self.names):
            self.sums[name]["kl"][reading] += float(stats.kl[j].sum())
            self.sums[name]["entropy"][reading] += float(stats.entropy[j].sum())
            self.sums[name]["ce"][reading] += float(stats.ce[j, :-1].sum())

    def count(self, tokenizer: Any, ids: list[int]) -> None:
        self.tokens += len(ids)
        self.ce_tokens += len(ids) - 1
        self.bytes += token_bytes(tokenizer, ids)
        self.ce_bytes += token_bytes(tokenizer, ids[1:])

    def _units(self, total: Any, metric: str) -> dict[str, Any]:
        count, nbytes = (self.ce_tokens, self.ce_bytes) if metric == "ce" else (self.tokens, self.bytes)
        per_token, per_byte = total / count, bits_per_byte(total, nbytes)
        if isinstance(total, torch.Tensor):
            return {"nats_per_token": torch.as_tensor(per_token).tolist(),
                    "bits_per_byte": torch.as_tensor(per_byte).tolist()}
        return {"nats_per_token": per_token, "bits_per_byte": per_byte}

    def report(self, descriptions: dict[str, str]) -> dict[str, Any]:
        lenses: dict[str, Any] = {}
        for name in self.names:
            rep: dict[str, Any] = {"description": descriptions[name]}
            rep.update({m: self._units(self.sums[name][m], m) for m in METRICS})
            rep["mean_kl"] = float(sum(rep["kl"]["nats_per_token"]) / self.n_readings)
            rep["mean_kl_bits_per_byte"] = float(sum(rep["kl"]["bits_per_byte"]) / self.n_readings)
            lenses[name] = rep
        return {"lenses": lenses, "final": {m: self._units(self.final[m], m) for m in ("ce", "entropy")}}


def _chunks(corpus: Corpus, tokenizer: Any, seq_len: int, max_tokens: int, progress: bool) -> Iterator[list[list[int]]]:
    """The first ``max_tokens // seq_len`` chunks (one sequence each), with a progress bar in tokens."""
    from tqdm.auto import tqdm

    n_chunks = max_tokens // seq_len
    with tqdm(total=n_chunks * seq_len, desc="evaluating lens", disable=bar_disable(progress), unit="tok",
              dynamic_ncols=True) as bar:
        for chunk in itertools.islice(corpus.chunks(tokenizer, seq_len, batch_size=1), n_chunks):
            yield chunk
            bar.update(seq_len)


@torch.no_grad()
def _score_chunk(lenses: list[Lens], chunk: list[list[int]], totals: _Totals) -> None:
    """One frozen forward; then, per reading, every lens's logits in one streamed projection."""
    model = lenses[0].model
    ids = torch.tensor(chunk, dtype=torch.long)
    hs, final_logits = run_readings(model, ids, lenses[0].readings)
    target = target_stats(final_logits)
    nxt = ids[0, 1:].to(final_logits.device)
    totals.final["ce"] += float(cross_entropy_from_logits(final_logits[:-1], nxt).double().sum())
    totals.final["entropy"] += float(target.entropy.double().sum())
    del final_logits
    next_ids = torch.cat([nxt, nxt[:1]])  # the last token has no next one: its CE is dropped in add()
    unembedding = Unembedding(model)
    cols = _block_columns(len(lenses) * ids.numel(), model.d_vocab)
    for i, h in enumerate(hs):
        t = torch.stack([ln.translate(h, i) for ln in lenses])  # [lenses, tokens, d]
        totals.add(i, logit_stats(unembedding.blocks(t, cols), target, next_ids))


def save_report(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write an evaluation report as JSON (atomically)."""
    from lmscope.interventions.artifacts import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2))
    return Path(path)


def plot_report(report: dict[str, Any], path: str | os.PathLike[str], unit: str = "nats_per_token") -> Path:
    """PNG of per-reading KL (left) and cross-entropy (right) for every lens in ``report`` (written atomically)."""
    import matplotlib.pyplot as plt

    from lmscope.interventions.artifacts import atomic_save_figure

    readings = report["readings"]
    x = list(range(len(readings)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    label = "nats/token" if unit == "nats_per_token" else "bits/byte"
    for ax, metric, title in ((axes[0], "kl", "KL(final || lens)"), (axes[1], "ce", "cross-entropy (next token)")):
        for name, rep in report["lenses"].items():
            ax.plot(x, rep[metric][unit], marker="o", ms=3, label=f"{name} lens")
        if metric == "ce":
            ax.axhline(report["final"]["ce"][unit], color="gray", ls="--", lw=1, label="model output")
        ax.set_title(title)
        ax.set_xlabel("reading")
        ax.set_ylabel(label)
        step = max(1, len(readings) // 10)
        ax.set_xticks(x[::step], [readings[i] for i in x[::step]], rotation=45, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{report.get('model', '')} on {report.get('corpus', '')} ({report['tokens']:,} tokens)", fontsize=9)
    fig.tight_layout()
    plt.close(fig)  # detach from pyplot: no figure accumulates across calls
    return atomic_save_figure(fig, path)
