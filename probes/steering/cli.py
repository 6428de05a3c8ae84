"""``lmscope steer``: build a steering vector from contrast pairs and show steered vs unsteered text.

``lmscope steer --pairs FILE.jsonl --layer L --scale S [--method mean] [--max-new-tokens N] "PROMPT"``

``FILE.jsonl`` has one ``{"positive": ..., "negative": ...}`` object per line (``--pairs sentiment`` uses the
shipped sentiment pairs). ``--scale`` counts the layer's typical residual norm (``--unit resid``, the default:
``0.5`` adds half a typical residual along the vector's direction) or the vector as built (``--unit raw``).
Several scales (``--scale -1,0,1``) print a table of continuations, one row per scale.
Torch and the model load only when the command runs (``register`` is cheap).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import textwrap
from typing import Any

from lmscope.interventions.cli import CliError, add_model_args, check_prompt, model_from_args
from lmscope.interventions.cli_folders import add_force_arg, check_out_folder


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``steer`` sub-command to the ``lmscope`` sub-command parsers."""
    p = subparsers.add_parser("steer", help="Steer generation with a vector built from contrast pairs.",
                              description="Build a steering vector from contrast pairs and show steered vs "
                                          "unsteered continuations of PROMPT (one scale), or a table of them "
                                          "(several scales).")
    p.add_argument("prompt", help="prompt to continue")
    p.add_argument("--pairs", required=True,
                   help="JSONL file of {positive, negative} contrast pairs, or 'sentiment' (the shipped pairs)")
    p.add_argument("--layer", type=int, action="append", required=True,
                   help="layer to steer at (repeat for several; negative counts from the end)")
    p.add_argument("--scale", required=True,
                   help="steering strength, or several comma-separated (-1,0,1: a table); see --unit")
    p.add_argument("--unit", default="resid", choices=["resid", "raw"],
                   help="what --scale counts: 'resid' (default) the layer's typical residual norm along the "
                        "vector's direction; 'raw' the vector as built (unit vectors with --normalize)")
    p.add_argument("--method", default="mean", choices=["mean", "actadd", "pca", "logistic"],
                   help="how the pairs become a vector: mean difference, ActAdd (first pair only), first principal "
                        "component, or a logistic-regression direction (default mean)")
    p.add_argument("--site", default="resid_pre", choices=["resid_pre", "resid_post"],
                   help="the residual stream to read the pairs from and steer (default resid_pre)")
    p.add_argument("--token", default="-1", help="token compared in each pair: an index or 'mean' (default -1)")
    p.add_argument("--positions", default="all", choices=["all", "prompt", "generated"],
                   help="which tokens are steered: every token, the prompt's, or the generated ones (default all)")
    p.add_argument("--normalize", action="store_true", help="with --unit raw: unit-normalise each layer's vector")
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens generated per continuation (default 40)")
    add_model_args(p)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    # dest is not "save": nnsight gives every object a .save() method, so argparse would see the attribute as set
    p.add_argument("--save", dest="save_folder", metavar="FOLDER",
                   help="also save the steering vector into this folder (default: not saved)")
    add_force_arg(p, "--save")
    p.add_argument("--width", type=int, default=0, help="total output width (default: terminal width)")
    p.set_defaults(func=run_steer)
    return p


def side_by_side(left: str, right: str, width: int, titles: tuple[str, str] = ("unsteered", "steered")) -> str:
    """Two texts wrapped into columns of equal width, with titles."""
    col = max(20, (width - 3) // 2)
    a = [titles[0], "-" * len(titles[0])] + _wrap(left, col)
    b = [titles[1], "-" * len(titles[1])] + _wrap(right, col)
    n = max(len(a), len(b))
    a += [""] * (n - len(a))
    b += [""] * (n - len(b))
    return "\n".join(f"{x:<{col}} | {y}" for x, y in zip(a, b))


def _wrap(text: str, width: int) -> list[str]:
    out: list[str] = []
    for para in text.splitlines() or [""]:
        out += textwrap.wrap(para, width) or [""]
    return out


def parse_scales(text: str) -> list[float]:
    """``"8"`` or ``"-1,0,1"`` to floats; anything else is a :class:`CliError`."""
    try:
        scales = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--scale must be a number or comma-separated numbers (-1,0,1), got {text!r}.") from None
    if not scales or not all(math.isfinite(s) for s in scales):
        raise CliError(f"--scale must be finite numbers, got {text!r}.")
    return scales


SHIPPED_PAIRS = {"sentiment": "sentiment_pairs.jsonl"}  # --pairs NAME -> a file of probes/steering/data


def run_steer(args: argparse.Namespace) -> int:
    """Build the vector, then print unsteered and steered continuations side by side (one scale) or a table."""
    from .evals import DATA_DIR, load_pairs
    from .generation import generation_sweep
    from .vectors import SteeringVector

    try:
        token: int | str = args.token if args.token == "mean" else int(args.token)
    except ValueError:
        raise CliError(f"--token must be an integer or 'mean', got {args.token!r}.") from None
    scales = parse_scales(args.scale)
    check_prompt(args.prompt, "The prompt", "give some text to continue")
    if args.save_folder:
        check_out_folder(args.save_folder, "a steering vector", args.force, "--save")
    if args.normalize and args.unit == "resid":
        raise CliError("--normalize applies to --unit raw; --unit resid already steers along the unit direction.")
    shipped = args.pairs in SHIPPED_PAIRS and not os.path.exists(args.pairs)
    pos, neg = load_pairs(DATA_DIR / SHIPPED_PAIRS[args.pairs] if shipped else args.pairs)
    if args.method == "actadd":
        pos, neg = pos[:1], neg[:1]
    model = model_from_args(args)
    sv = SteeringVector.from_pairs(model, pos, neg, layers=args.layer, method=args.method, site=args.site,
                                   token=None if args.method == "actadd" and args.token == "-1" else token)
    if args.save_folder:
        sv.save(args.save_folder)
    prompt = args.prompt
    if args.chat and model.tokenizer is not None:
        prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                     add_generation_prompt=True)
    print(describe(sv, scales, args.unit, args.normalize))
    if len(scales) > 1:
        sweep = generation_sweep(model, sv, scales, [prompt], args.max_new_tokens, unit=args.unit,
                                 positions=args.positions) if not args.normalize else \
            generation_sweep(model, sv.to_steer(1.0, positions=args.positions, normalize=True), scales, [prompt],
                             args.max_new_tokens)
        print(sweep.to_markdown())
        return 0
    steers = sv.to_steer(scales[0], positions=args.positions, normalize=args.normalize, unit=args.unit)
    plain = model.generate(prompt, args.max_new_tokens).texts
    steered = model.generate(prompt, args.max_new_tokens, interventions=steers).texts
    assert plain is not None and steered is not None
    width = args.width or shutil.get_terminal_size((120, 20)).columns
    print(side_by_side(plain[0], steered[0], width, ("unsteered", f"steered (scale {scales[0]:g})")))
    return 0


def describe(sv: Any, scales: list[float], unit: str, normalize: bool) -> str:
    """What the vector is and what a scale of 1 adds at each layer, in numbers (the first lines of the output)."""
    parts = []
    for site, norm in sv.norms.items():
        resid = sv.resid_norms.get(site)
        typical = f", typical residual norm {resid:.1f}" if resid is not None else ""
        parts.append(f"{site}: vector norm {norm:.1f}{typical}")
    head = f"{sv.method} vector from {sv.n_pairs} pairs; " + "; ".join(parts) + "."
    shown = ", ".join(f"{s:g}" for s in scales)
    if unit == "resid":
        added = ", ".join(f"{sv.resid_norms[site]:.1f} at {site}" for site in sv.sites)
        return (f"{head}\nscale {shown} in units of the typical residual norm (outlier tokens left out): "
                f"scale 1 adds a vector of norm {added} along the steering direction (negative: against it).")
    what = "the unit vector" if normalize else "the vector as built"
    return f"{head}\nscale {shown} multiplies {what} (--unit raw)."
