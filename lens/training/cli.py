"""``lmscope train-lens`` and ``lmscope eval-lens`` (registered through the ``lmscope.commands`` entry points).

torch and transformers are imported inside the commands, so ``lmscope --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lmscope.interventions.cli import CliError, add_model_args, model_from_args
from lmscope.interventions.cli_folders import add_force_arg

from ..cli import add_lens_arg, check_lens_arg, is_default_model_name, lens_from_spec


def register_train(subparsers: Any) -> None:
    """Add ``train-lens`` to the ``lmscope`` sub-command parsers."""
    p = subparsers.add_parser(
        "train-lens", help="Train a tuned lens on text files, directories, globs or hf:DATASET (data-parallel "
                           "under torchrun).",
        description="Train a tuned lens (closed-form least-squares init, then fused-KL fine-tune steps) and save "
                    "it as a folder (config.json + lens.safetensors).")
    p.add_argument("corpus", nargs="*", help="text files, directories, globs or hf:NAME[:CONFIG] (default: the "
                                             "offline default corpus)")
    add_model_args(p)
    p.add_argument("--out", required=True,
                   help="folder to write the lens to (replaced atomically; a folder holding another run's lens or "
                        "anything else is refused without --force)")
    p.add_argument("--steps", type=int, default=20, help="KL fine-tune steps after the init (default 20; 0: the "
                                                         "closed-form lens alone)")
    p.add_argument("--tokens-per-step", type=int, default=1024,
                   help="tokens per fine-tune step, a multiple of --seq-len (default 1024)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per training sequence (default 512)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the fine-tune (default 1e-3)")
    p.add_argument("--init", choices=["lstsq", "zero"], default="lstsq",
                   help="start from the closed-form least-squares fit, or from zero translators (the logit lens) "
                        "(default lstsq)")
    p.add_argument("--init-tokens", type=int, default=32768,
                   help="tokens read by the least-squares init (default 32768)")
    p.add_argument("--ridge", type=float, default=1e-3,
                   help="ridge penalty of the least-squares init, towards the identity translator (default 1e-3)")
    p.add_argument("--mid", action="store_true", help="also train resid_mid readings where they exist")
    p.add_argument("--split", choices=["all", "train", "heldout"], default="all",
                   help="which documents of the corpus to use (default all; the default corpus uses train)")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="checkpoint every N steps into the checkpoint folder (default 0: none, or every steps/10 "
                        "with --resume and no --checkpoint-dir)")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default: OUT.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    add_force_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars (they show only on a terminal anyway)")
    p.set_defaults(func=cmd_train_lens)


def register_eval(subparsers: Any) -> None:
    """Add ``eval-lens`` to the ``lmscope`` sub-command parsers."""
    e = subparsers.add_parser(
        "eval-lens", help="Per-layer KL / cross-entropy / entropy of a lens (and the logit lens) on text.",
        description="Evaluate a lens and the logit lens side by side on held-out text; print a table, optionally "
                    "write JSON and a PNG plot.")
    e.add_argument("corpus", nargs="*", help="text files, directories, globs or hf:NAME (default: the held-out "
                                             "split of the default corpus)")
    add_model_args(e)
    add_lens_arg(e)
    e.add_argument("--max-tokens", type=int, default=8192, help="tokens to evaluate (default 8192)")
    e.add_argument("--seq-len", type=int, default=None,
                   help=f"tokens per sequence (default {EVAL_SEQ_LEN}, lowered to --max-tokens when that is smaller)")
    e.add_argument("--split", choices=["all", "train", "heldout"], default=None,
                   help="restrict the corpus to these documents (default: all given text)")
    e.add_argument("--json", default=None, metavar="OUT", help="write the full report as JSON")
    e.add_argument("--plot", default=None, metavar="OUT.png", help="write per-layer KL/CE plot")
    e.add_argument("--quiet", action="store_true", help="no progress bar (it shows only on a terminal anyway)")
    e.set_defaults(func=cmd_eval_lens)


#: ``eval-lens``'s sequence length when ``--seq-len`` is not given.
EVAL_SEQ_LEN = 512


def eval_seq_len(max_tokens: int, seq_len: int | None) -> int:
    """The sequence length ``eval-lens`` uses: ``--seq-len`` if given (at most ``--max-tokens``, else a
    :class:`CliError` naming both flags), else 512 lowered to ``--max-tokens`` (with a note on stderr)."""
    if max_tokens < 2:
        raise CliError(f"--max-tokens must be at least 2, got {max_tokens}.")
    if seq_len is None:
        if max_tokens < EVAL_SEQ_LEN:
            print(f"note: --max-tokens {max_tokens} is below the default --seq-len {EVAL_SEQ_LEN}; evaluating one "
                  f"sequence of {max_tokens} tokens (--seq-len {max_tokens}).", file=sys.stderr)
        return min(EVAL_SEQ_LEN, max_tokens)
    if max_tokens < seq_len:
        raise CliError(f"--max-tokens ({max_tokens}) must be at least --seq-len ({seq_len}): raise --max-tokens, or "
                       f"pass --seq-len {max_tokens} or lower.")
    return seq_len


def _corpus(args: argparse.Namespace, default_split: str) -> Any:
    from .corpus import Corpus
    from .offline import default_corpus

    split = args.split
    if not args.corpus:
        return default_corpus(split or default_split)  # type: ignore[arg-type]
    return Corpus.from_sources(args.corpus, split=split or "all")


def cmd_train_lens(args: argparse.Namespace) -> int:
    """Train and save a tuned lens: the corpus and ``--out`` are checked, and the run announced, before the model
    loads."""
    if args.tokens_per_step % args.seq_len:
        raise CliError(f"--tokens-per-step ({args.tokens_per_step}) must be a multiple of --seq-len "
                       f"({args.seq_len}).")
    from lmscope.interventions.distributed import DataParallel

    from .checkpoint import STATE_JSON
    from .runplan import announce, run_settings

    corpus = _corpus(args, "train")  # a pattern matching nothing fails before the model loads
    settings = run_settings(args.steps, args.tokens_per_step, args.seq_len, args.lr, args.init, args.init_tokens,
                            args.ridge, corpus.describe())
    check_lens_out(args.out, settings, args.force)
    if args.resume and args.checkpoint_every <= 0 and args.checkpoint_dir is None:
        args.checkpoint_every = max(1, args.steps // 10)
    ckpt = args.checkpoint_dir or (f"{args.out.rstrip('/')}.ckpt" if (args.checkpoint_every or args.resume) else None)
    dp = DataParallel.from_env()  # under torchrun every process holds the same lens: rank 0 talks and writes
    resume = args.resume and ckpt is not None and (Path(ckpt) / STATE_JSON).is_file()
    if dp.is_main:
        if args.resume and not resume:
            print(f"lmscope: no checkpoint in {ckpt} to resume from; training from the beginning.", file=sys.stderr)
        print(announce(settings), file=sys.stderr, flush=True)
    from .fit import train_tuned_lens

    model = model_from_args(args)
    lens = train_tuned_lens(model, corpus, steps=args.steps, tokens_per_step=args.tokens_per_step,
                            seq_len=args.seq_len, lr=args.lr, init=args.init, init_tokens=args.init_tokens,
                            ridge=args.ridge, sites="all" if args.mid else "resid_post", checkpoint_dir=ckpt,
                            checkpoint_every=args.checkpoint_every, resume=resume, progress=not args.quiet)
    if not dp.is_main:
        return 0
    lens.save(args.out)
    print(f"saved tuned lens ({lens.n_readings} readings) to {args.out}; {trained(lens.meta.get('training', {}))}",
          file=sys.stderr)
    return 0


def check_lens_out(out: str | Path, settings: dict[str, Any], force: bool) -> None:
    """Refuse (a :class:`CliError`) to replace ``out`` unless it is absent, empty, or a lens of the same kind of run
    (the same :data:`RUN_KEYS`), or ``force``."""
    from lmscope.interventions.cli_folders import check_out_folder

    from .runplan import RUN_KEYS, held_run

    if check_out_folder(out, "a tuned lens", force) != "a tuned lens" or force:
        return
    held = held_run(out)
    if held == settings:
        return
    if held is None:
        differs = "whose training settings are not recorded"
    else:
        differs = "from another run (" + ", ".join(f"{k} {held[k]!r} there, {settings[k]!r} here"
                                                   for k in RUN_KEYS if held[k] != settings[k]) + ")"
    raise CliError(f"--out {str(out)!r} already holds a tuned lens {differs}; this run would replace it. Pass --force "
                   "to replace it, or choose another --out.")


def trained(info: dict[str, Any]) -> str:
    """How the run ended, rounded: tokens read and the last KL step's train KL (none with ``--steps 0``)."""
    kl = info.get("final_train_kl")
    ending = (f"final train KL {kl:.4f} nats/token" if isinstance(kl, (int, float)) else
              "closed-form fit only (--steps 0: no KL step, so no train KL)")
    return f"{info.get('tokens', 0):,} tokens, {ending}"


def cmd_eval_lens(args: argparse.Namespace) -> int:
    """Evaluate a lens (beside the logit lens) and print a per-reading table."""
    if args.plot and not args.plot.lower().endswith(".png"):
        raise CliError(f"--plot {args.plot!r}: the file must end in .png.")
    check_lens_arg(args.lens, args.model)
    seq_len = eval_seq_len(args.max_tokens, args.seq_len)
    from .evaluate import evaluate_lens, plot_report, save_report

    corpus = _corpus(args, "heldout")  # a pattern matching nothing fails before the model loads
    model = model_from_args(args)
    lens = lens_from_spec(args.lens, model, is_default_model_name(args.model), "resid_post")
    report = evaluate_lens(lens, corpus, max_tokens=args.max_tokens, seq_len=seq_len,
                           progress=not args.quiet)
    names = list(report["lenses"])
    head = "reading".ljust(16) + "".join(f"{n + ' ' + m:>16}" for n in names for m in ("KL", "CE"))
    print(f"{report['tokens']:,} tokens ({report['bytes']:,} bytes) of {report['corpus']}; nats/token")
    print(head)
    for i, r in enumerate(report["readings"]):
        row = r.ljust(16)
        for n in names:
            rep = report["lenses"][n]
            row += f"{rep['kl']['nats_per_token'][i]:>16.4f}{rep['ce']['nats_per_token'][i]:>16.4f}"
        print(row)
    print("mean KL: " + ", ".join(f"{n} {report['lenses'][n]['mean_kl']:.4f}" for n in names)
          + f"; model CE {report['final']['ce']['nats_per_token']:.4f}")
    if args.json:
        save_report(report, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot_report(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


__all__ = ["cmd_eval_lens", "cmd_train_lens", "register_eval", "register_train"]
