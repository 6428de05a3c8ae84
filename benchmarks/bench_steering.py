"""Steering benchmarks on SmolLM2-135M-Instruct (CPU).

Parts (``--part``, default all):

- ``overhead``: greedy generation of 64 tokens with steering at 2 layers vs plain
  ``generate``; tokens/s ratio (target >= 0.97), median of interleaved repeats.
- ``extract``: steering-vector extraction from 256 pairs, time per pair, batched vs
  one pair at a time.
- ``tradeoff``: the alignment/helpfulness sweep on the shipped evals, with fits;
  writes ``--out`` (JSON + PNG).

Run: ``.venv/bin/python benchmarks/bench_steering.py --part overhead``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def bench_overhead(model, repeats: int, new_tokens: int = 64) -> dict:
    from lmscope.probes.steering import SteeringVector

    torch.manual_seed(0)
    layers = [10, 20]
    sv = SteeringVector({f"resid_pre.{i}": torch.randn(model.d_model) for i in layers}, method="random",
                        fingerprint=model.fingerprint())
    steers = sv.to_steer(4.0, normalize=True)
    prompt = "Write a short story about a lighthouse keeper."

    def gen(ivs):
        t = time.perf_counter()
        # min_new_tokens keeps both arms at exactly new_tokens tokens (no early EOS)
        g = model.generate(prompt, new_tokens, interventions=ivs, min_new_tokens=new_tokens)
        dt = time.perf_counter() - t
        return g.new_tokens.shape[1] / dt

    gen([])  # warm-up
    gen(steers)
    plain, steered = [], []
    for i in range(repeats):  # interleave, alternating which goes first
        order = [("p", []), ("s", steers)] if i % 2 == 0 else [("s", steers), ("p", [])]
        for name, ivs in order:
            (plain if name == "p" else steered).append(gen(ivs))
    ratios = [s / p for s, p in zip(steered, plain)]
    return {"plain_tok_s": statistics.median(plain), "steered_tok_s": statistics.median(steered),
            "ratio_of_medians": statistics.median(steered) / statistics.median(plain),
            "median_paired_ratio": statistics.median(ratios), "repeats": repeats, "layers": layers,
            "new_tokens": new_tokens}


def bench_extract(model, n_pairs: int, batch_size: int, one_by_one: int) -> dict:
    from lmscope.probes.steering import SteeringVector, load_pairs

    pos, neg = load_pairs()
    pos = (pos * (n_pairs // len(pos) + 1))[:n_pairs]
    neg = (neg * (n_pairs // len(neg) + 1))[:n_pairs]
    layers = list(range(model.n_layers))
    t = time.perf_counter()
    SteeringVector.from_pairs(model, pos, neg, layers=layers, method="mean", batch_size=batch_size, progress=False)
    batched = (time.perf_counter() - t) / n_pairs
    t = time.perf_counter()
    SteeringVector.from_pairs(model, pos[:one_by_one], neg[:one_by_one], layers=layers, method="mean",
                              batch_size=1, progress=False)
    single = (time.perf_counter() - t) / one_by_one
    return {"n_pairs": n_pairs, "batch_size": batch_size, "batched_ms_per_pair": 1000 * batched,
            "one_at_a_time_ms_per_pair": 1000 * single, "one_at_a_time_measured_on": one_by_one,
            "speedup": single / batched}


def bench_tradeoff(model, out: Path, scales: list[float], layers: list[int]) -> dict:
    from lmscope.probes.steering import SteeringVector, load_pairs, mcq_eval, sentiment_eval, steering_tradeoff

    pos, neg = load_pairs()
    sv = SteeringVector.from_pairs(model, pos, neg, layers=layers, method="pca")
    res = steering_tradeoff(model, sv, scales, sentiment_eval(), mcq_eval(), progress=True)
    out.mkdir(parents=True, exist_ok=True)
    res.plot(out / "steering_tradeoff.png")
    (out / "steering_tradeoff.json").write_text(json.dumps(res.as_dict(), indent=2))
    print(res.to_markdown())
    return res.as_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["overhead", "extract", "tradeoff", "all"], default="all")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--one-by-one", type=int, default=64, help="pairs timed one at a time (per-pair cost)")
    ap.add_argument("--scales", default="-32:32:4", help="start:stop:step (inclusive) for the trade-off sweep")
    ap.add_argument("--layers", default="15,16,17")
    ap.add_argument("--out", type=Path, default=Path("/tmp/lmscope-bench-steering"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lmscope.interventions import HookedModel

    model = HookedModel.default()
    results = {}
    if args.part in ("overhead", "all"):
        results["overhead"] = bench_overhead(model, args.repeats, args.new_tokens)
        print(json.dumps(results["overhead"], indent=2))
    if args.part in ("extract", "all"):
        results["extract"] = bench_extract(model, args.pairs, args.batch_size, args.one_by_one)
        print(json.dumps(results["extract"], indent=2))
    if args.part in ("tradeoff", "all"):
        a, b, s = (float(x) for x in args.scales.split(":"))
        scales = [round(a + i * s, 6) for i in range(int(round((b - a) / s)) + 1)]
        results["tradeoff"] = bench_tradeoff(model, args.out, scales, [int(x) for x in args.layers.split(",")])


if __name__ == "__main__":
    main()
