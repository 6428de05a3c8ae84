"""Benchmark: held-out lens evaluation, the previous implementation vs the streamed one, same process.

Both evaluate the same lens (the cached default tuned lens of SmolLM2 if present, else a seeded random
tuned lens: the cost does not depend on the values) and the logit lens on the same held-out tokens.

- before: the implementation up to the metrics refactor (kept verbatim below as ``evaluate_before``):
  per lens, per reading, per row block, a full-vocabulary ``log_softmax`` then KL, entropy (a second
  ``exp``) and cross-entropy each in their own pass over ``[rows, vocab]``.
- after: :func:`lmscope.lens.training.evaluate.evaluate_lens`: the two lenses of a reading in one
  projection, streamed over vocabulary blocks that stay in cache, one ``exp`` per logit
  (:func:`lmscope.lens.metrics.logit_stats`).

Prints wall and CPU seconds of each, the ratios, and the largest difference between the two reports.
Usage: ``.venv/bin/python benchmarks/bench_lens_eval.py [--tokens 1024] [--threads 2] [--repeats 1]``
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any


def evaluate_before(lens: Any, corpus: Any, max_tokens: int, seq_len: int, row_block: int = 512) -> dict[str, Any]:
    """The previous ``evaluate_lens`` loop (metric sums only), for the baseline."""
    import torch

    from lmscope.interventions.collect import run_readings
    from lmscope.lens.lenses import LogitLens
    from lmscope.lens.training.corpus import model_tokenizer

    model = lens.model
    lenses = {"logit": LogitLens(model, sites=lens.site_kinds), "tuned": lens}
    n_r = lens.n_readings
    sums = {name: {m: torch.zeros(n_r, dtype=torch.float64) for m in ("kl", "ce", "entropy")} for name in lenses}
    n_tok = 0
    for chunk in corpus.chunks(model_tokenizer(model), seq_len, batch_size=1):
        ids = torch.tensor(chunk, dtype=torch.long)
        hs, final_logits = run_readings(model, ids, lens.readings)
        nxt = ids[0, 1:].to(final_logits.device)
        with torch.no_grad():
            logp = torch.log_softmax(final_logits, -1)
            p = logp.exp()
            plogp = (p * logp).sum(-1)
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
        if n_tok + seq_len > max_tokens:
            break
    return {name: {m: (v / (n_tok - (n_tok // seq_len if m == "ce" else 0))).tolist() for m, v in s.items()}
            for name, s in sums.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="alternate before/after this many times")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from lmscope.interventions import HookedModel
    from lmscope.lens.lenses import TunedLens
    from lmscope.lens.training.evaluate import evaluate_lens
    from lmscope.lens.training.fit import default_lens_dir
    from lmscope.lens.training.offline import default_corpus

    model = HookedModel.default()
    folder = default_lens_dir(model)
    if (folder / "config.json").is_file():
        lens, which = TunedLens.load(folder, model), f"cached default lens {folder}"
    else:
        lens, which = TunedLens(model), "seeded random tuned lens"
        torch.manual_seed(0)
        with torch.no_grad():
            lens.weight.normal_(0, 0.01)
    held = default_corpus("heldout")
    print(f"model {model!r}; {which}; {args.tokens} held-out tokens in chunks of {args.seq_len}; "
          f"threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}", flush=True)

    times: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    reports: dict[str, Any] = {}
    for _ in range(args.repeats):
        for name in ("before", "after"):
            w0, c0 = time.perf_counter(), time.process_time()
            if name == "before":
                reports[name] = evaluate_before(lens, held, args.tokens, args.seq_len)
            else:
                rep = evaluate_lens(lens, held, max_tokens=args.tokens, seq_len=args.seq_len, progress=False)
                reports[name] = {n: {m: r[m]["nats_per_token"] for m in ("kl", "ce", "entropy")}
                                 for n, r in rep["lenses"].items()}
            times[name].append((time.perf_counter() - w0, time.process_time() - c0))
            print(f"  {name}: {times[name][-1][0]:.1f} s wall, {times[name][-1][1]:.1f} s CPU", flush=True)
    diff = max(abs(a - b) for n in reports["before"] for m in reports["before"][n]
               for a, b in zip(reports["before"][n][m], reports["after"][n][m]))
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in times.items()}
    tokens = args.tokens // args.seq_len * args.seq_len
    print(f"\nbefore: {best['before'][0]:.1f} s wall ({tokens / best['before'][0]:.1f} tok/s), "
          f"{best['before'][1]:.1f} s CPU")
    print(f"after:  {best['after'][0]:.1f} s wall ({tokens / best['after'][0]:.1f} tok/s), "
          f"{best['after'][1]:.1f} s CPU")
    print(f"speed-up (before / after): wall {best['before'][0] / best['after'][0]:.2f}x, "
          f"CPU {best['before'][1] / best['after'][1]:.2f}x")
    print(f"largest |before - after| over every lens, metric and reading: {diff:.2e} nats/token "
          f"({'identical within float tolerance' if diff < 1e-3 and math.isfinite(diff) else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
