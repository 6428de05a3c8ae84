"""``lmscope attribute "PROMPT" --target " Paris" [--contrast " London"] [--top 10] [--plot heat.png]``

Direct logit attribution of one token's logit at the prompt's last token: prints the largest terms
(heads, MLPs, embedding, biases) and checks that all terms sum to the model's own logit.
"""

from __future__ import annotations

import argparse
from typing import Any

from lmscope.interventions.cli import CliError, add_model_args, check_prompt, model_from_args


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``attribute`` sub-command."""
    p = subparsers.add_parser("attribute", help="Direct logit attribution per head / MLP for one prompt.",
                              description="Direct logit attribution of one token's logit at the prompt's last "
                                          "token: prints the largest terms (heads, MLPs, embedding, biases) and "
                                          "checks that all terms sum to the model's own logit.")
    p.add_argument("prompt", help="the prompt; its last token predicts the target")
    p.add_argument("--target", required=True, help="single-token target string, e.g. ' Paris'")
    p.add_argument("--contrast", help="single-token contrast: attribute logit(target) - logit(contrast) (default: "
                                       "the target's logit alone)")
    p.add_argument("--top", type=int, default=10, help="how many terms to print (default 10)")
    p.add_argument("--plot", help="save the layer x head heat map to this PNG (default: no plot)")
    p.add_argument("--json", help="write every term to this JSON file (default: none)")
    p.add_argument("--no-positions", action="store_true", help="skip the per-position split of the top heads")
    add_model_args(p)
    p.set_defaults(func=run_attribute)
    return p


def run_attribute(args: argparse.Namespace) -> int:
    import json

    from .dla import attribute

    check_prompt(args.prompt)
    if args.top < 1:
        raise CliError(f"--top must be at least 1, got {args.top}.")
    model = model_from_args(args)
    attr = attribute(model, args.prompt, args.target, args.contrast, per_position=not args.no_positions)
    what = f"logit({attr.labels[0]!r})" + (f" - logit({attr.labels[1]!r})" if attr.contrast is not None else "")
    print(f"{what} = {attr.logit:.4f}; sum of terms = {attr.total:.4f} (final norm: {attr.norm}, "
          "linearised at this run's scale)")
    for note in attr.notes:
        print(f"note: {note}")
    print(f"{'term':<16}{'value':>10}")
    for name, value in attr.top(args.top):
        line = f"{name:<16}{value:>10.4f}"
        if attr.head_positions is not None and name.startswith("L") and "H" in name:
            layer, head = (int(x) for x in name[1:].split("H"))
            per = attr.head_positions[layer, head]
            k = int(per.abs().argmax())
            line += f"   mostly from token {k} {attr.tokens[k]!r} ({float(per[k]):+.3f})"
        print(line)
    if args.plot:
        attr.heatmap(args.plot)
        print(f"heat map: {args.plot}")
    if args.json:
        from lmscope.interventions.artifacts import atomic_write_text

        atomic_write_text(args.json, json.dumps({"logit": attr.logit, "total": attr.total, "terms": attr.terms(),
                                                 "notes": attr.notes}, indent=1))
    return 0
