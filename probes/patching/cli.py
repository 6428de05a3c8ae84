"""``lmscope patch``: a clean/corrupt activation-patching sweep written as a heat map (PNG) and JSON.

``lmscope patch --clean "..." --corrupt "..." --target " Paris" [--distractor " Rome"] [--site resid_pre]
[--method exact|attribution|atp-star|loop] [--layers 0-10] --out DIR``

Denoising convention: clean activations are written into the corrupt run, one (layer, position)
cell at a time (``head_z``: one head at a time, every position at once). The metric is
``logit(target) - logit(distractor)`` at the last position, or ``log p(target)`` without a distractor.
Torch and the model load only when the command runs (``register`` is cheap).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lmscope.interventions.cli import add_model_args, check_prompt, model_from_args
from lmscope.interventions.cli_folders import add_force_arg, check_out_folder

SITES = ("resid_pre", "attn_out", "mlp_out", "resid_mid", "resid_post", "head_z")
#: --method -> patching_sweep's method (atp-star needs no shell quoting; atp* is read as atp-star)
METHODS = {"exact": "exact", "attribution": "attribution", "atp-star": "atp*", "loop": "loop"}


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``patch`` sub-command to the ``lmscope`` sub-command parsers."""
    p = subparsers.add_parser("patch", help="Activation-patching sweep (clean -> corrupt) as a heat map.",
                              description="A clean/corrupt activation-patching sweep, written as a heat map (PNG) "
                                          "and JSON into --out.")
    p.add_argument("--clean", required=True, help="clean prompt (its activations are patched in)")
    p.add_argument("--corrupt", required=True, help="corrupt prompt (the run being patched); same token length")
    p.add_argument("--target", required=True, help="answer token of the clean prompt, e.g. ' Paris'")
    p.add_argument("--distractor", help="answer token of the corrupt prompt; metric = target - distractor logit "
                                         "(default: none, the metric is log p(target))")
    p.add_argument("--site", default="resid_pre", choices=SITES, help="what to patch (default resid_pre)")
    p.add_argument("--method", default="exact", choices=["exact", "attribution", "atp-star", "loop"],
                   type=lambda name: "atp-star" if name == "atp*" else name,
                   help="exact batched sweep, attribution patching (gradient estimate; atp-star, also spelt atp*: "
                        "AtP* with the QK fix) or the slow loop (default exact)")
    p.add_argument("--layers", help="layers to sweep: '0,5,10', '0-10', '-1' (default: all)")
    p.add_argument("--positions", default=None, choices=["each", "all"],
                   help="each token separately (default; head_z defaults to all at once) or all at once")
    p.add_argument("--direction", default="denoise", choices=["denoise", "noise"],
                   help="denoise: clean into corrupt (default); noise: corrupt into clean")
    p.add_argument("--out", required=True,
                   help="folder for patching.json, tensors.safetensors, heatmap.png (replaced; another artifact "
                        "there is refused without --force)")
    add_force_arg(p)
    add_model_args(p)
    p.set_defaults(func=run_patch)
    return p


def run_patch(args: argparse.Namespace) -> int:
    """Run the sweep, write the folder, print the strongest cells."""
    from lmscope.interventions.specs import parse_layers, resolve_layers

    from .metrics import default_metric
    from .sweep import patching_sweep

    check_prompt(args.clean, "--clean", "give the clean prompt")
    check_prompt(args.corrupt, "--corrupt", "give the corrupt prompt")
    layers = parse_layers(args.layers)
    check_out_folder(args.out, "a patching result", args.force)
    model = model_from_args(args)
    metric = default_metric(model, args.target, args.distractor)
    sites = [f"{args.site}.{layer}" for layer in resolve_layers(model, layers)]
    positions_arg = args.positions or ("all" if args.site == "head_z" else "each")
    positions = "all" if positions_arg == "all" else None
    result = patching_sweep(model, args.clean, args.corrupt, sites, positions, metric, heads=args.site == "head_z",
                            method=METHODS[args.method], direction=args.direction)
    out = result.save(args.out)
    summary = {"out": str(out), "method": result.method, "metric": result.metric_name,
               "base_metric": round(result.base_metric, 4), "source_metric": round(result.source_metric, 4),
               "top": [{"site": t.site, "head": t.head, "position": t.position, "effect": round(t.effect, 4),
                        "patched": round(t.value, 4)} for t in result.top(5)],
               "notes": result.notes}
    print(json.dumps(summary, indent=1))
    return 0
