"""``lmscope probe DATA.jsonl --out DIR [--sites resid_post.*] [--positions last] [--cv 5] [--plot sweep.png]``

Collect activations of labelled prompts into an on-disk dataset (resumable), then run a cross-validated
probe sweep with the control task and majority baseline. ``DATA.jsonl`` has one ``{"prompt": ..., "label":
...}`` object per line (an optional ``"type"`` names the word type for the control task; by default the
probed token).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lmscope.interventions.cli import CliError, add_model_args, model_from_args
from lmscope.interventions.cli_folders import add_force_arg, check_out_folder


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``probe`` sub-command."""
    p = subparsers.add_parser("probe", help="Collect activations of labelled prompts and sweep linear probes.",
                              description="Collect activations of the labelled prompts of DATA.jsonl into an "
                                          "on-disk dataset (resumable), then run a cross-validated probe sweep with "
                                          "the control task and the majority baseline.")
    p.add_argument("data", help="JSONL of {prompt, label[, type]} objects")
    p.add_argument("--out", required=True,
                   help="dataset folder (created, or resumed if it holds this dataset; another artifact there is "
                        "refused without --force)")
    p.add_argument("--sites", default="resid_post.*", help="site names, comma separated (default resid_post.*)")
    p.add_argument("--positions", default="last", help="'last' (default), 'all' or a token index")
    p.add_argument("--cv", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and the control task (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per forward while collecting (default 16)")
    p.add_argument("--no-control", action="store_true", help="skip the control task")
    p.add_argument("--random-init", action="store_true", help="also probe a random-init copy of the model")
    p.add_argument("--plot", help="save the per-layer plot to this PNG (default: no plot)")
    p.add_argument("--json", help="write the sweep to this JSON file (default: none)")
    add_force_arg(p)
    add_model_args(p)
    p.set_defaults(func=run_probe)
    return p


def read_labelled(path: str) -> tuple[list[str], list[Any], list[Any] | None]:
    """Prompts, labels and (optional) word types from a JSONL file; errors name the bad line."""
    prompts, labels, types = [], [], []
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as err:
        raise CliError(f"Cannot read {path}: {err.strerror}.") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise CliError(f"{path}:{n} is not JSON ({err.msg}).") from None
        if not isinstance(obj, dict) or "prompt" not in obj or "label" not in obj:
            raise CliError(f"{path}:{n} needs an object with 'prompt' and 'label'.")
        prompts.append(obj["prompt"])
        labels.append(obj["label"])
        types.append(obj.get("type"))
    if not prompts:
        raise CliError(f"{path} holds no examples.")
    return prompts, labels, types if all(t is not None for t in types) else None


def run_probe(args: argparse.Namespace) -> int:
    from lmscope.interventions.datasets import write_dataset

    from .sweep import probe_sweep

    prompts, labels, types = read_labelled(args.data)
    positions: Any = args.positions
    if positions not in ("last", "all"):
        try:
            positions = int(positions)
        except ValueError:
            raise CliError(f"--positions must be 'last', 'all' or an int, got {args.positions!r}.") from None
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    check_out_folder(args.out, "an activation dataset", args.force)
    model = model_from_args(args)
    ds = write_dataset(model, args.out, prompts, sites, labels, positions, batch_size=args.batch_size)
    if types is not None and ds.n_rows != len(prompts):
        raise CliError("'type' in the JSONL names one word type per prompt; use --positions last or an int.")
    result = probe_sweep(ds, cv=args.cv, seed=args.seed, control=not args.no_control, types=types)
    if args.random_init:
        from .controls import random_init_sweep

        rand = random_init_sweep(model, prompts, labels, ds.sites, positions, seed=args.seed, cv=args.cv,
                                 control=False)
        result.add_baseline("random_init", rand)
    print(f"{ds}\n{result.to_markdown()}\nbest site by selectivity: {result.best()}")
    if args.plot:
        result.plot(args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        result.to_json(args.json)
    return 0
