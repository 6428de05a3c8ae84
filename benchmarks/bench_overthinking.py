"""Overthinking-study benchmarks on SmolLM2-135M-Instruct or Gemma 3 270M (``--model``; CPU).

Parts (``--part``, default all):

- ``study``: the whole study (``run_study``) with ``--n-prompts`` prompts x 3 settings (true, permuted,
  random), logit + tuned lens, head scores on the unnatural task, 3 ablation methods with
  ``--n-random`` random head sets; wall time and peak RSS (one run, no warm-up: the study itself is the
  unit of work); writes the report + figures to ``--out`` and prints its summary.
- ``heads``: the one-forward-per-batch head-score pass vs the naive one-forward-per-head loop on the
  same ``--head-prompts`` prompts, same process; ratio of wall times, and the max score difference.
- ``ablation``: the ablation phase (none + 3 methods x (top + ``--n-random`` random sets) configurations of
  ``--k`` heads) on ``--ablation-prompts`` prompts: configurations batched (one final-token forward for all)
  vs one final-token forward per configuration, same process; ratio and max probability difference. The
  batched runner also starts each group at its first ablated layer and unembeds only the label rows.

Run: ``.venv/bin/python benchmarks/bench_overthinking.py --part all``
"""

from __future__ import annotations

import argparse
import gc
import time

import torch


def bench_study(model, args) -> None:
    from memory import rss_kb

    from lmscope.probes.overthinking import run_study

    gc.collect()
    before = rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    report = run_study(model, args.task, n_prompts=args.n_prompts, n_demos=args.n_demos, n_random=args.n_random,
                       batch_size=args.batch_size, progress=not args.quiet)
    wall = time.perf_counter() - t0
    peak = rss_kb("VmHWM")
    report.save(args.out)
    print(report.summary())
    print(f"study: task={args.task} prompts={args.n_prompts} x settings={report.config.settings} "
          f"demos={args.n_demos} random draws={args.n_random}: wall {wall:.1f} s "
          f"({', '.join(f'{k} {v:.1f}' for k, v in report.timings.items())}); peak RSS {peak / 1024:.0f} MiB "
          f"(+{(peak - before) / 1024:.0f} MiB over the loaded model and lens, {before / 1024:.0f} MiB)")


def bench_heads(model, args) -> None:
    from lmscope.probes.overthinking import batched_head_scores, build_prompts, naive_head_scores

    ps = build_prompts(model, "unnatural", "permuted", n_prompts=args.head_prompts, n_demos=args.n_demos)
    batched_head_scores(model, ps.subset([0]), batch_size=1)  # warm up eager attention
    t0 = time.perf_counter()
    fast = batched_head_scores(model, ps, batch_size=args.batch_size)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = naive_head_scores(model, ps, batch_size=args.batch_size, progress=not args.quiet)
    t_slow = time.perf_counter() - t0
    diff = max(float((fast[k] - slow[k]).abs().max()) for k in fast)
    print(f"head scores, {args.head_prompts} prompts x {args.n_demos} demos, {model.n_layers}x{model.n_heads} heads: "
          f"one forward per batch {t_fast:.2f} s vs one forward per head {t_slow:.1f} s -> {t_slow / t_fast:.0f}x "
          f"faster; max |difference| {diff:.2e}")


def bench_ablation(model, args) -> None:
    from lmscope.probes.overthinking import build_prompts, final_label_probs, random_head_sets

    ps = build_prompts(model, args.task, "permuted", n_prompts=args.ablation_prompts, n_demos=args.n_demos)
    draws = random_head_sets(model.n_layers, model.n_heads, args.k, args.n_random + 1, seed=0)
    configs: dict = {"none": ((), "zero")}
    for m in ("zero", "mean", "qkv"):
        configs[f"{m}/top"] = (draws[0], m)
        for i, d in enumerate(draws[1:]):
            configs[f"{m}/random{i}"] = (d, m)
    final_label_probs(model, ps.subset([0]), {"qkv": configs["qkv/top"]}, progress=False)  # warm up
    times, res = {}, {}
    for batched in (True, False):
        t0 = time.perf_counter()
        chunk = {"config_chunk": args.config_chunk} if args.config_chunk else {}
        res[batched] = final_label_probs(model, ps, configs, batch_size=args.batch_size, progress=False,
                                         batch_configs=batched, **chunk)
        times[batched] = time.perf_counter() - t0
    diff = max(float((res[True][k] - res[False][k]).abs().max()) for k in configs)
    print(f"ablation phase, {args.ablation_prompts} prompts x {args.n_demos} demos, {len(configs)} configurations "
          f"of {args.k} heads, batch {args.batch_size}: batched {times[True]:.2f} s vs per-config loop "
          f"{times[False]:.2f} s -> {times[False] / times[True]:.1f}x faster; max |difference| {diff:.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", default="all", choices=["all", "study", "heads", "ablation"])
    p.add_argument("--task", default="category")
    p.add_argument("--n-prompts", type=int, default=100)
    p.add_argument("--n-demos", type=int, default=12)
    p.add_argument("--n-random", type=int, default=20)
    p.add_argument("--head-prompts", type=int, default=4)
    p.add_argument("--ablation-prompts", type=int, default=16)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--config-chunk", type=int, default=None, help="configurations per batched forward "
                   "(default: final_label_probs' own)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="overthinking-bench")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--model", default="default", help="default (SmolLM2-135M-Instruct) or gemma-3-270m")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from lmscope.interventions import HookedModel
    from lmscope.lens.training import default_lens

    model = HookedModel.default() if args.model == "default" else HookedModel.from_pretrained(args.model)
    if args.part in ("all", "study"):
        default_lens(model)  # cached: loaded before the measured study
    if args.part in ("all", "heads"):
        bench_heads(model, args)
    if args.part in ("all", "ablation"):
        bench_ablation(model, args)
    if args.part in ("all", "study"):
        bench_study(model, args)


if __name__ == "__main__":
    main()
