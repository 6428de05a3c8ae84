"""``lmscope circuit``: edge attribution over clean/corrupt pairs, the top circuit, its faithfulness curve.

``lmscope circuit --clean "..." --corrupt "..." --target " Mary" --distractor " John" --out DIR`` (one pair), or
``--pairs pairs.jsonl`` (one ``{"clean", "corrupt", "target", "distractor"}`` object per line), or ``--task
ioi|capitals`` (ready-made pairs). Writes into DIR: ``scores/`` (every edge's score per pair), ``circuit/`` (the
top ``--top`` edges, pruned to input-to-logits paths), ``circuit.png`` and ``circuit.html`` (interactive, offline;
both titled with that circuit's own faithfulness), ``faithfulness.png`` (the curve against random circuits of equal
size) and ``summary.json``; prints the summary. ``--method exact`` patches only the ``--exact-edges`` edges an
EAP-IG pass ranks first (every edge of a real model would take hours). Torch and the model load only when the
command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lmscope.interventions.cli import CliError, add_model_args, model_from_args
from lmscope.interventions.cli_folders import add_force_arg, check_out_folder

WRITES = "a circuit study"


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``circuit`` sub-command to the ``lmscope`` sub-command parsers."""
    p = subparsers.add_parser("circuit", help="Edge attribution, top circuit and faithfulness curve over prompt pairs.",
                              description="Score every edge of the model over clean/corrupt pairs (EAP, EAP-IG or "
                                          "exact edge patching), draw the top circuit and measure its "
                                          "faithfulness against random circuits of the same size.")
    p.add_argument("--clean", help="one clean prompt (with --corrupt, --target; default: none)")
    p.add_argument("--corrupt", help="the corrupt prompt: same number of tokens as --clean (default: none)")
    p.add_argument("--target", help="the clean answer token, e.g. ' Mary' (default: none)")
    p.add_argument("--distractor", help="the corrupt answer token; metric = target - distractor logit (default: "
                                        "none, then the target's log-probability)")
    p.add_argument("--pairs", help="JSONL file of pairs instead of one pair (default: none)")
    p.add_argument("--task", choices=["ioi", "capitals"], help="ready-made pairs instead (default: none)")
    p.add_argument("--n-pairs", type=int, default=24, help="pairs of --task (default 24)")
    p.add_argument("--method", default="eap-ig", choices=["eap", "eap-ig", "exact"],
                   help="edge scores: EAP, EAP-IG or exact edge patching (default eap-ig)")
    p.add_argument("--ig-steps", type=int, default=5, help="EAP-IG interpolation steps (default 5)")
    p.add_argument("--exact-edges", type=int, default=500,
                   help="--method exact: patch this many edges, the EAP-IG top ones (default 500)")
    p.add_argument("--source", default="corrupt", choices=["corrupt", "mean"],
                   help="what a dropped edge carries: the corrupt run's value or the node's mean (default corrupt)")
    p.add_argument("--top", type=int, default=100, help="edges of the drawn circuit before pruning (default 100)")
    p.add_argument("--sizes", help="circuit sizes of the faithfulness curve, e.g. '10,30,100' (default: 1, 2, 5, "
                                   "10, ... up to the scored edges)")
    p.add_argument("--n-random", type=int, default=3, help="random circuits per size (default 3)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward (default 16)")
    p.add_argument("--out", required=True, help="folder for the scores, circuit, plots and summary.json")
    add_force_arg(p)
    add_model_args(p)
    p.set_defaults(func=run_circuit)
    return p


def _sizes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--sizes is a comma-separated list of edge counts such as '10,30,100', got {text!r}.") \
            from None
    if not sizes or min(sizes) < 1:
        raise CliError(f"--sizes needs positive edge counts, got {text!r}.")
    return sizes


def _task(args: argparse.Namespace, model: Any) -> Any:
    from .tasks import PairTask, capital_pairs, ioi_pairs, load_pairs

    if args.task:
        return (ioi_pairs if args.task == "ioi" else capital_pairs)(model, args.n_pairs)
    if args.pairs:
        return load_pairs(model, args.pairs)
    from lmscope.probes.patching.metrics import default_metric

    return PairTask("pair", [args.clean], [args.corrupt], [args.target], [args.distractor],
                    [default_metric(model, args.target, args.distractor)])


def _check(args: argparse.Namespace) -> None:
    given = [bool(args.task), bool(args.pairs), args.clean is not None]
    if sum(given) != 1:
        raise CliError("Give the pairs one way: --clean/--corrupt/--target, --pairs FILE.jsonl or --task.")
    if args.clean is not None and not (args.clean.strip() and (args.corrupt or "").strip() and args.target):
        raise CliError("--clean, --corrupt and --target must all be given and non-empty.")
    if args.pairs and not Path(args.pairs).is_file():
        raise CliError(f"--pairs {args.pairs!r} is not a file.")
    for name in ("n_pairs", "ig_steps", "exact_edges", "top", "n_random", "batch_size"):
        if getattr(args, name) < (0 if name == "n_random" else 1):
            raise CliError(f"--{name.replace('_', '-')} must be a positive number, got {getattr(args, name)}.")


def run_circuit(args: argparse.Namespace) -> int:
    """Score the edges, draw the top circuit, measure the faithfulness curve, write the folder."""
    _check(args)
    sizes = _sizes(args.sizes)
    check_out_folder(args.out, WRITES, args.force)
    model = model_from_args(args)
    task = _task(args, model)
    summary = hunt(model, task, args, sizes)
    print(json.dumps(summary, indent=1))
    return 0


def hunt(model: Any, task: Any, args: argparse.Namespace, sizes: list[int] | None) -> dict[str, Any]:
    """The command's work once the model and pairs are there (see the module docstring)."""
    from lmscope.interventions.artifacts import atomic_write_text

    from .attribution import edge_attribution
    from .curve import faithfulness_curve
    from .faithfulness import evaluate_circuit

    data = (model, task.clean, task.corrupt, task.metrics)
    kw: dict[str, Any] = dict(source=args.source, batch_size=args.batch_size, progress=None)
    scores = edge_attribution(*data, method="eap-ig" if args.method == "exact" else args.method,
                              ig_steps=args.ig_steps, **kw)
    if args.method == "exact":
        order = scores.edge_values("abs").nan_to_num(-1).argsort(descending=True)[: args.exact_edges]
        scores = edge_attribution(*data, method="exact", edges=scores.graph.edge_index[order], **kw)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scores.save(out / "scores")
    k = min(args.top, int(scores.scored().sum()))
    circuit = scores.circuit(k=k)
    circuit.save(out / "circuit")
    curve = faithfulness_curve(*data, scores, sizes, n_random=args.n_random, **kw)
    curve.plot(out / "faithfulness.png")
    # the drawn circuit's own faithfulness, so that its picture never borrows the curve's larger circuits' numbers
    # (the curve's point when it has this size: the same pruned top-k circuit)
    kept = curve.top[curve.sizes.index(k)] if k in curve.sizes else evaluate_circuit(*data, circuit, **kw)
    title = (f"Circuit: {circuit.n_edges} edges, {len(circuit.nodes())} nodes (top {args.top} by |score|, pruned): "
             f"keeps {kept.faithfulness:.1%} ± {kept.stderr:.1%} of the gap")
    circuit.plot(out / "circuit.png", title=title)
    circuit.to_html(out / "circuit.html", title=title)
    summary = {"out": str(out), "method": args.method, "pairs": len(task), "gap": round(scores.gap, 4),
               "top_edges": [{"edge": e, "score": round(m, 4), "stderr": round(s, 4)} for e, m, s in scores.top(10)],
               "circuit_edges": circuit.n_edges,
               "circuit_faithfulness": {"faithfulness": round(kept.faithfulness, 4), "stderr": round(kept.stderr, 4)},
               "faithfulness": curve.summary(),
               "files": ["scores/", "circuit/", "circuit.png", "circuit.html", "faithfulness.png", "summary.json"]}
    atomic_write_text(out / "summary.json", json.dumps({**summary, "curve": curve.to_dict()}, indent=1))
    return summary
