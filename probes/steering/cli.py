"""``lmscope steer``: build a steering vector from contrast pairs and show steered vs unsteered text.

``lmscope steer --pairs FILE.jsonl --layer L --scale S [--method mean] [--max-new-tokens N] "PROMPT"``

``FILE.jsonl`` has one ``{"positive": ..., "negative": ...}`` object per line.
Torch and the model load only when the command runs (``register`` is cheap).
"""

from __future__ import annotations

import argparse
import shutil
import textwrap
from typing import Any

from lmscope.interventions.cli import CliError, add_model_args, model_from_args


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``steer`` sub-command to the ``lmscope`` sub-command parsers."""
    p = subparsers.add_parser("steer", help="steer generation with a vector built from contrast pairs",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("prompt", help="prompt to continue")
    p.add_argument("--pairs", required=True, help="JSONL file of {positive, negative} contrast pairs")
    p.add_argument("--layer", type=int, action="append", required=True,
                   help="layer to steer at (repeat for several; negative counts from the end)")
    p.add_argument("--scale", type=float, required=True, help="multiplier of the steering vector")
    p.add_argument("--method", default="mean", choices=["mean", "actadd", "pca", "logistic"])
    p.add_argument("--site", default="resid_pre", choices=["resid_pre", "resid_post"])
    p.add_argument("--token", default="-1", help="token compared in each pair: an index or 'mean' (default -1)")
    p.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    p.add_argument("--normalize", action="store_true", help="unit-normalise each layer's vector first")
    p.add_argument("--max-new-tokens", type=int, default=40)
    add_model_args(p)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--save", help="also save the steering vector into this folder")
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


def run_steer(args: argparse.Namespace) -> int:
    """Build the vector, then print unsteered and steered continuations side by side."""
    from .evals import load_pairs
    from .vectors import SteeringVector

    try:
        token: int | str = args.token if args.token == "mean" else int(args.token)
    except ValueError:
        raise CliError(f"--token must be an integer or 'mean', got {args.token!r}.") from None
    pos, neg = load_pairs(args.pairs)
    if args.method == "actadd":
        pos, neg = pos[:1], neg[:1]
    model = model_from_args(args)
    sv = SteeringVector.from_pairs(model, pos, neg, layers=args.layer, method=args.method, site=args.site,
                                   token=None if args.method == "actadd" and args.token == "-1" else token)
    if args.save:
        sv.save(args.save)
    prompt = args.prompt
    if args.chat and model.tokenizer is not None:
        prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                     add_generation_prompt=True)
    steers = sv.to_steer(args.scale, positions=args.positions, normalize=args.normalize)
    plain = model.generate(prompt, args.max_new_tokens).texts
    steered = model.generate(prompt, args.max_new_tokens, interventions=steers).texts
    assert plain is not None and steered is not None
    width = args.width or shutil.get_terminal_size((120, 20)).columns
    norms = ", ".join(f"{k}={v:.2f}" for k, v in sv.norms.items())
    print(f"{args.method} vector from {sv.n_pairs} pairs; norms: {norms}; scale {args.scale:g}"
          f"{' (unit vectors)' if args.normalize else ''}")
    print(side_by_side(plain[0], steered[0], width, ("unsteered", f"steered (scale {args.scale:g})")))
    return 0
