"""Held-out evaluation of lenses: per-reading KL to the final layer, cross-entropy and entropy.

For each reading, on the same tokens, we report (Belrose et al. 2023, §3):

* ``kl``: KL(final distribution || lens distribution), over every position;
* ``ce``: cross-entropy of the lens distribution against the real next token
  (positions 0..T-2 of each chunk);
* ``entropy``: entropy of the lens distribution;

each in nats/token and in bits/byte (total nats / ln 2 / bytes of the decoded
text of the evaluated tokens). The given lens and the logit lens (same readings)
are evaluated side by side from one frozen forward per chunk, so their numbers
are directly comparable. :func:`save_report` writes JSON; :func:`plot_report` a PNG.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from lmscope.interventions.collect import run_readings
from lmscope.interventions.errors import InputError

from .corpus import Corpus, as_corpus, model_tokenizer

if TYPE_CHECKING:
    from ..lenses import Lens

METRICS = ("kl", "ce", "entropy")


def _token_bytes(tokenizer: Any, ids: Sequence[int]) -> int:
    try:
        text = tokenizer.decode(list(ids), skip_special_tokens=True)
    except TypeError:
        text = tokenizer.decode(list(ids))
    return len(text.encode("utf-8"))


def evaluate_lens(lens: Lens, corpus: Corpus | str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                  max_tokens: int = 8192, seq_len: int = 512, compare_logit: bool = True,
                  split: str | None = None, progress: bool = False, row_block: int = 512) -> dict[str, Any]:
    """Evaluate ``lens`` (and the logit lens alongside it) on the first ``max_tokens`` tokens of ``corpus``.

    ``corpus`` is used as given (a :class:`~lmscope.lens.corpus.Corpus` or sources); ``split``
    restricts it (e.g. ``"heldout"``). Fewer tokens than ``max_tokens`` is allowed (with the
    count reported), but at least one full chunk is required. Returns a JSON-able dict:
    ``{"readings": [...], "lenses": {name: {metric: {"nats_per_token": [...], "bits_per_byte": [...]},
    "mean_kl": ...}}, "final": {...}, "tokens": N, "bytes": B, ...}``.
    """
    from ..lenses import LogitLens

    model = lens.model
    if max_tokens < seq_len:
        raise InputError(f"max_tokens ({max_tokens}) must be at least seq_len ({seq_len}).")
    corpus = as_corpus(corpus, split)  # type: ignore[arg-type]
    tokenizer = model_tokenizer(model)
    lenses: dict[str, Lens] = {}
    if compare_logit and not isinstance(lens, LogitLens):
        lenses["logit"] = LogitLens(model, sites=lens.site_kinds)
    lenses[lens.name if lens.name not in lenses else f"{lens.name}_2"] = lens
    readings = list(lens.readings)
    n_r = len(readings)
    sums = {name: {m: torch.zeros(n_r, dtype=torch.float64) for m in METRICS} for name in lenses}
    final = {"ce": 0.0, "entropy": 0.0}
    n_tok = n_ce = n_bytes = n_ce_bytes = 0

    n_chunks = max_tokens // seq_len
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=n_chunks, desc="evaluating lens", disable=not progress, unit="chunk")
    for chunk in corpus.chunks(tokenizer, seq_len, batch_size=1):
        ids = torch.tensor(chunk, dtype=torch.long)
        hs, final_logits = run_readings(model, ids, readings)
        nxt = ids[0, 1:].to(final_logits.device)
        with torch.no_grad():
            logp = torch.log_softmax(final_logits, -1)
            p = logp.exp()
            plogp = (p * logp).sum(-1)
            final["ce"] += float(-logp[:-1].gather(-1, nxt[:, None]).sum())
            final["entropy"] += float(-plogp.sum())
            del logp
            for name, ln in lenses.items():
                for i in range(n_r):
                    for s in range(0, hs[i].shape[0], row_block):
                        e = min(s + row_block, hs[i].shape[0])
                        logq = torch.log_softmax(ln.logits(hs[i][s:e], i).float(), -1)
                        ps = p[s:e]
                        sums[name]["kl"][i] += float((plogp[s:e] - (ps * logq).sum(-1)).double().sum())
                        sums[name]["entropy"][i] += float(-(logq.exp() * logq).sum(-1).double().sum())
                        rows = torch.arange(s, min(e, hs[i].shape[0] - 1), device=logq.device)
                        if rows.numel():
                            sums[name]["ce"][i] += float(-logq[rows - s, nxt[rows]].double().sum())
        n_tok += ids.shape[1]
        n_ce += ids.shape[1] - 1
        n_bytes += _token_bytes(tokenizer, chunk[0])
        n_ce_bytes += _token_bytes(tokenizer, chunk[0][1:])
        bar.update(1)
        if n_tok + seq_len > max_tokens:
            break
    bar.close()
    if n_tok == 0:
        raise InputError(f"The corpus {corpus.describe()} holds less than one chunk of {seq_len} tokens.")
    ln2 = math.log(2)
    out: dict[str, Any] = {"readings": readings, "tokens": n_tok, "bytes": n_bytes, "seq_len": seq_len,
                           "max_tokens": max_tokens, "corpus": corpus.describe(), "model": model.arch.name,
                           "seconds": round(time.perf_counter() - t0, 2), "lenses": {}}
    for name in lenses:
        rep: dict[str, Any] = {"description": lenses[name].describe()}
        for m in METRICS:
            count, nbytes = (n_ce, n_ce_bytes) if m == "ce" else (n_tok, n_bytes)
            tot = sums[name][m]
            rep[m] = {"nats_per_token": (tot / count).tolist(),
                      "bits_per_byte": (tot / ln2 / max(1, nbytes)).tolist()}
        rep["mean_kl"] = float(sum(rep["kl"]["nats_per_token"]) / n_r)
        rep["mean_kl_bits_per_byte"] = float(sum(rep["kl"]["bits_per_byte"]) / n_r)
        out["lenses"][name] = rep
    out["final"] = {"ce": {"nats_per_token": final["ce"] / n_ce,
                           "bits_per_byte": final["ce"] / ln2 / max(1, n_ce_bytes)},
                    "entropy": {"nats_per_token": final["entropy"] / n_tok,
                                "bits_per_byte": final["entropy"] / ln2 / max(1, n_bytes)}}
    return out


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
