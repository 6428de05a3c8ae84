"""Probe benchmarks on SmolLM2-135M-Instruct (CPU): dataset collection, memory while writing, probe sweeps.

Parts (``--part``, default all):

- ``throughput``: ``write_dataset`` (``resid_post.*``, every token, float32 shards) vs a plain ``model.run``
  over the same batches; tokens/s of each and their ratio (interleaved repeats, medians).
- ``memory``: peak RSS growth while writing a dataset larger than ``--budget-mb`` (in a fresh folder), vs the
  dataset's size on disk; the shard size bounds what is held (``--shard-rows``).
- ``sweep``: a 5-fold probe sweep with the control task over 30 sites of ``--rows`` x 576 activations (a real
  dataset of the model's ``resid_post.*`` at the last token), vs one plain scikit-learn fit of the same probe
  (so the ratio is sweep time / one fit; the sweep does 30 x 2 x 5 fits).

Run: ``.venv/bin/python benchmarks/bench_probes.py [--part throughput|memory|sweep]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _prompts(n: int, words: int = 24) -> list[str]:
    base = ("the quick brown fox jumps over the lazy dog while a small bird sings in the old tree near the "
            "river and children play in the park on a sunny afternoon").split()
    return [" ".join(base[(i + k) % len(base)] for k in range(words)) for i in range(n)]


def bench_throughput(model, n: int, batch_size: int, repeats: int) -> dict:
    from lmscope.interventions import write_dataset

    prompts = _prompts(n)
    tokens = int(model.tokenize(prompts).lengths.sum())
    plain, collect = [], []
    for r in range(repeats):
        for arm in (("plain", "collect") if r % 2 == 0 else ("collect", "plain")):
            t = time.perf_counter()
            if arm == "plain":
                for b in range(0, n, batch_size):
                    model.run(prompts[b:b + batch_size])
                plain.append(time.perf_counter() - t)
            else:
                folder = Path(tempfile.mkdtemp(prefix="lmscope-bench-"))
                try:
                    write_dataset(model, folder, prompts, ["resid_post.*"], positions="all", batch_size=batch_size,
                                  progress=False)
                    collect.append(time.perf_counter() - t)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
    p, c = statistics.median(plain), statistics.median(collect)
    return {"tokens": tokens, "plain_tok_s": tokens / p, "collect_tok_s": tokens / c, "ratio": p / c,
            "paired": statistics.median(a / b for a, b in zip(plain, collect))}


def bench_memory(model, budget_mb: float, shard_rows: int, batch_size: int) -> dict:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from memory import rss_kb

    from lmscope.interventions import write_dataset

    row_bytes = model.n_layers * model.d_model * 4
    words = 24
    n = int(budget_mb * 1.5 * 2**20 / row_bytes / (words + 1)) + 1  # ~1.5x the budget on disk
    prompts = _prompts(n, words)
    folder = Path(tempfile.mkdtemp(prefix="lmscope-bench-"))
    try:
        write_dataset(model, folder / "warm", prompts[:batch_size], ["resid_post.*"], positions="all",
                      batch_size=batch_size, progress=False)
        import gc

        gc.collect()
        before = rss_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        t = time.perf_counter()
        ds = write_dataset(model, folder / "ds", prompts, ["resid_post.*"], positions="all", batch_size=batch_size,
                           shard_rows=shard_rows, progress=False)
        dt = time.perf_counter() - t
        peak = rss_kb("VmHWM")
        size = sum(f.stat().st_size for f in (folder / "ds").iterdir()) / 2**20
        return {"prompts": n, "rows": ds.n_rows, "dataset_mb": size, "budget_mb": budget_mb,
                "rss_growth_mb": (peak - before) / 1024, "rss_before_mb": before / 1024, "seconds": dt,
                "shards": len(ds.shards)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bench_sweep(model, rows: int, batch_size: int) -> dict:
    import numpy as np

    from lmscope.interventions import write_dataset
    from lmscope.probes.linear import default_estimator, probe_sweep

    nouns = ["dog", "cat", "bird", "car", "tree", "book", "horse", "river", "table", "song", "girl", "boy"]
    prompts = [f"The {nouns[i % 12]}{'s' if (i // 12) % 2 else ''} near house number {i}" for i in range(rows)]
    labels = [(i // 12) % 2 for i in range(rows)]
    folder = Path(tempfile.mkdtemp(prefix="lmscope-bench-"))
    try:
        ds = write_dataset(model, folder, prompts, ["resid_post.*"], labels, batch_size=batch_size, progress=False)
        X = ds.array("resid_post.15")
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            default_estimator().fit(X, np.array(labels))  # warm-up: the first fit pays one-time costs
            t = time.perf_counter()
            default_estimator().fit(X, np.array(labels))
            one = time.perf_counter() - t
        t = time.perf_counter()
        res = probe_sweep(ds, cv=5, types=[i % 12 for i in range(rows)], progress=False)
        sweep = time.perf_counter() - t
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"rows": rows, "sites": len(res.rows), "sweep_s": sweep, "one_fit_s": one, "ratio": sweep / one,
            "fits": len(res.rows) * 2 * 5, "best": res.best(), "best_acc": res[res.best()]["acc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["throughput", "memory", "sweep"], action="append")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-mb", type=float, default=200.0)
    ap.add_argument("--shard-rows", type=int, default=512)
    ap.add_argument("--rows", type=int, default=480)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lmscope.interventions import HookedModel

    model = HookedModel.default()
    parts = args.part or ["throughput", "memory", "sweep"]
    if "throughput" in parts:
        r = bench_throughput(model, args.prompts, args.batch_size, args.repeats)
        print(f"throughput: {r['tokens']} tokens; plain forward {r['plain_tok_s']:.0f} tok/s, write_dataset "
              f"(resid_post.*, all tokens) {r['collect_tok_s']:.0f} tok/s; ratio {r['ratio']:.3f} "
              f"(median paired {r['paired']:.3f})")
    if "memory" in parts:
        r = bench_memory(model, args.budget_mb, args.shard_rows, args.batch_size)
        print(f"memory: dataset {r['dataset_mb']:.0f} MiB on disk ({r['rows']} rows, {r['shards']} shards) vs budget "
              f"{r['budget_mb']:.0f} MiB; peak RSS growth while writing {r['rss_growth_mb']:.0f} MiB "
              f"(RSS before {r['rss_before_mb']:.0f} MiB); ratio growth/dataset "
              f"{r['rss_growth_mb'] / r['dataset_mb']:.3f}; {r['seconds']:.1f} s")
    if "sweep" in parts:
        r = bench_sweep(model, args.rows, args.batch_size)
        print(f"sweep: {r['sites']} sites x {r['rows']} rows x 576, 5-fold + control ({r['fits']} fits): "
              f"{r['sweep_s']:.1f} s; one plain fit {r['one_fit_s']:.3f} s; ratio {r['ratio']:.0f} "
              f"(best {r['best']}, acc {r['best_acc']:.3f})")


if __name__ == "__main__":
    main()
