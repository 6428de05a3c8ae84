"""``lmscope overthinking``: the overthinking study on one task; prints the critical layer, the top
false-induction heads and the gap reduction, and writes the report and figures.

``lmscope overthinking --task category [--n-prompts 100] [--n-demos 12] [--out DIR]``
Torch and the model load only when the command runs (``register`` is cheap).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lmscope.interventions.cli import CliError, add_model_args, model_from_args
from lmscope.interventions.cli_folders import add_force_arg, check_out_folder

BUILTIN = ("unnatural", "category", "sentiment", "continent", "parity", "sst2", "agnews", "trec")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``overthinking`` sub-command."""
    p = subparsers.add_parser("overthinking", help="Overthinking study: lens accuracy with true vs false demos, "
                              "critical layer, false-induction heads, head ablation.",
                              description="The overthinking study on one task: prints the critical layer, the top "
                                          "false-induction heads and the gap reduction, and writes the report and "
                                          "figures.")
    p.add_argument("--task", required=True, help=f"task name ({', '.join(BUILTIN)})")
    p.add_argument("--score-task", default="unnatural", help="task whose permuted prompts score the heads "
                   "(default unnatural, as the authors; 'same' = --task)")
    p.add_argument("--false-setting", default="permuted", choices=["permuted", "half", "random"],
                   help="the false demos: every label permuted, half of them, or random labels (default permuted)")
    p.add_argument("--n-prompts", type=int, default=100, help="prompts per setting (default 100)")
    p.add_argument("--n-demos", type=int, default=12, help="demonstrations per prompt (default 12)")
    p.add_argument("--top-k", type=int, default=5, help="top-scored heads ablated (default 5)")
    p.add_argument("--n-random", type=int, default=20, help="random head sets in the control (default 20)")
    p.add_argument("--lens", action="append", choices=["logit", "tuned"],
                   help="lens(es) to read with (repeat; default logit and tuned: the model's default tuned lens, "
                        "fitted once per model and cached)")
    p.add_argument("--no-ablation", action="store_true", help="skip the head ablations (lens readings and scores only)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt and random-head draws (default 0)")
    p.add_argument("--out", default="overthinking-out",
                   help="folder for report.json and the PNG figures (default overthinking-out)")
    add_force_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars (they show only on a terminal anyway)")
    add_model_args(p)
    p.set_defaults(func=run_overthinking)
    return p


def run_overthinking(args: argparse.Namespace) -> int:
    """Run the study and print its summary."""
    for name in ("n_prompts", "n_demos", "top_k", "batch_size"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.n_random < 0:
        raise CliError(f"--n-random must be at least 0, got {args.n_random}.")
    from .study import run_study
    from .tasks import load_task

    task = load_task(args.task)  # unknown names / offline HF datasets fail before the model loads
    score = task if args.score_task == "same" else load_task(args.score_task)
    check_out_folder(args.out, "an overthinking report", args.force)
    if score.name != task.name:
        print(f"lmscope: heads are scored on another task than the study's: {score.name!r} with permuted labels "
              f"(as the authors), the accuracy gap on {task.name!r}; --score-task same scores them on "
              f"{task.name!r}.", file=sys.stderr)
    model = model_from_args(args)
    lenses = args.lens or ["logit", "tuned"]
    report = run_study(model, task, score_task=score, false_setting=args.false_setting, n_prompts=args.n_prompts,
                       n_demos=args.n_demos, lenses=lenses, top_k=args.top_k, n_random=args.n_random,
                       ablate=not args.no_ablation, batch_size=args.batch_size, seed=args.seed,
                       progress=not args.quiet)
    out = report.save(args.out)
    print(report.summary())
    print(f"report and figures: {out}/ ({', '.join(sorted(report.figures))})")
    return 0
