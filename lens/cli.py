"""``lmscope decode``: decode a prompt layer by layer through the logit or a tuned lens.

Registered with the ``lmscope`` dispatcher (:mod:`lmscope.interventions.cli`) through the
``lmscope.commands`` entry-point group. torch/transformers load inside the command, after argument
parsing, so ``lmscope --help`` and argument errors are instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from lmscope.interventions.cli import (
    CliError,
    add_model_args,
    check_model_arg,
    check_prompt,
    model_from_args,
    process_start,
)
from lmscope.interventions.specs import parse_layers


def register(sub: Any) -> None:
    """Add ``decode`` to the ``lmscope`` sub-command parsers."""
    p = sub.add_parser("decode", help="Decode a prompt with the logit or tuned lens (layers x positions).",
                       description="Decode PROMPT layer by layer and print a table (readings down, positions "
                                   "across, top token + probability), or JSON.")
    p.add_argument("prompt", help="the text to decode")
    add_lens_arg(p)
    p.add_argument("--top-k", type=int, default=5, help="top tokens kept per cell (default 5)")
    p.add_argument("--positions", default="all", choices=["all", "last"],
                   help="decode every token or the last (default all)")
    p.add_argument("--layers", default=None, help="layer numbers: '0,5,10', '0-10', '-1' (default: all)")
    p.add_argument("--mid", action="store_true", help="also read resid_mid (after attention) where it exists")
    p.add_argument("--target", action="append", default=None, metavar="TOKEN",
                   help="track the rank/probability of this single token (repeatable)")
    p.add_argument("--plot", default=None, metavar="FILE", help="write a heatmap: FILE.png or FILE.html")
    p.add_argument("--color", default="prob", choices=["prob", "kl"], help="heatmap colour (default prob)")
    p.add_argument("--json", action="store_true", help="print the trajectory as JSON instead of a table")
    add_model_args(p, threads=False)
    p.add_argument("--timings", action="store_true", help="print import/load/forward timings to stderr")
    p.add_argument("--server", default=None, metavar="HOST:PORT",
                   help="use a running `lmscope serve` here (default: $LMSCOPE_SERVER or 127.0.0.1:8765; 'off': "
                        "always load the model in this process); falls back to loading when none answers")
    p.set_defaults(func=cmd_decode)


LENS_CHOICES = ("'logit', 'tuned' (the default lens of the default model), or an existing lens folder "
                "(lmscope's, or the tuned-lens package's config.json + params.pt)")


def add_lens_arg(parser: Any) -> None:
    """The ``--lens`` option every lens command takes (checked by :func:`check_lens_arg`)."""
    parser.add_argument("--lens", default="logit", help=f"which lens: {LENS_CHOICES} (default logit)")


TUNED_NEEDS_DEFAULT = ("--lens tuned without a folder only exists for the default model; pass the folder of "
                       "a lens trained for this model (lmscope train-lens), or --lens logit.")


def is_default_model_name(model: str) -> bool:
    """Whether ``--model`` names the embedded default model (``default`` or any of its names and aliases)."""
    from lmscope.interventions.defaults import SMOLLM2, embedded_model

    return embedded_model(model) is SMOLLM2


def check_lens_arg(spec: str, model: str = "default") -> None:
    """Refuse an unknown ``--lens``, or ``--lens tuned`` with a non-default ``--model``, before the model loads."""
    if spec not in ("logit", "tuned") and not os.path.isdir(spec):
        raise CliError(f"Unknown --lens {spec!r}: use {LENS_CHOICES}.")
    if spec == "tuned" and not is_default_model_name(model):
        raise CliError(TUNED_NEEDS_DEFAULT)


def lens_from_spec(spec: str, model: Any, is_default_model: bool, sites: Any = "resid_post") -> Any:
    """The lens named by ``--lens`` (shared by every lens command)."""
    from .lenses import LogitLens, TunedLens

    if spec == "logit":
        return LogitLens(model, sites=sites)
    if spec == "tuned":
        if not is_default_model:
            raise CliError(TUNED_NEEDS_DEFAULT)
        from .training.fit import default_lens

        return default_lens(model)
    if os.path.isdir(spec):
        from .formats import is_tuned_lens_folder, load_tuned_lens_folder

        if is_tuned_lens_folder(spec) and not os.path.isfile(os.path.join(spec, "lens.safetensors")):
            return load_tuned_lens_folder(spec, model)  # a lens published by the tuned-lens package
        return TunedLens.load(spec, model)
    raise CliError(f"Unknown --lens {spec!r}: use {LENS_CHOICES}.")


def cmd_decode(args: argparse.Namespace) -> int:
    """``lmscope decode``: one forward, then a table / JSON / heatmap."""
    check_prompt(args.prompt, "The prompt", "give some text to decode")
    if args.top_k < 1:
        raise CliError(f"--top-k must be at least 1, got {args.top_k}.")
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".html"):
        raise CliError(f"--plot {args.plot!r}: the file must end in .png or .html.")
    layers = parse_layers(args.layers)
    check_lens_arg(args.lens, args.model)
    check_model_arg(args.model)
    t1 = time.time()
    if served(args, t1):
        return 0
    is_default = is_default_model_name(args.model)
    model = model_from_args(args)
    lens = lens_from_spec(args.lens, model, is_default, "all" if args.mid else "resid_post")
    t2 = time.time()
    traj = lens.decode(args.prompt, top_k=args.top_k, targets=args.target, positions=args.positions, layers=layers)
    t3 = time.time()
    if args.json:
        print(traj.to_json())
    else:
        print(traj.table())
    if args.plot:
        path = traj.plot(args.plot, color=args.color)
        print(f"wrote {path}", file=sys.stderr)
    t4 = time.time()
    if args.timings:
        t0 = process_start()
        print(f"timings: startup+import {t1 - t0:.2f}s  load {t2 - t1:.2f}s  decode {t3 - t2:.2f}s  "
              f"output {t4 - t3:.2f}s  total {t4 - t0:.2f}s", file=sys.stderr)
    return 0


def served(args: argparse.Namespace, t1: float) -> bool:
    """Print the answer of a running ``lmscope serve`` (same output as a local decode); False if none."""
    from .serve.client import decode_via_server

    answer = decode_via_server(args)
    if answer is None:
        return False
    print(answer[0])
    if args.timings:
        t0 = process_start()
        print(f"timings: startup+import {t1 - t0:.2f}s  server decode {answer[1]:.2f}s  "
              f"total {time.time() - t0:.2f}s (served)", file=sys.stderr)
    return True
