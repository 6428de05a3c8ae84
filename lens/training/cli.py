"""``lmscope train-lens`` and ``lmscope eval-lens`` (registered through the ``lmscope.commands`` entry points).

torch and transformers are imported inside the commands, so ``lmscope --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lmscope.interventions.cli import CliError, add_model_args, model_from_args

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
    p.add_argument("--out", required=True, help="folder to write the lens to (replaced atomically)")
    p.add_argument("--steps", type=int, default=20, help="KL fine-tune steps after the init (default 20)")
    p.add_argument("--tokens-per-step", type=int, default=1024)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the fine-tune (default 1e-3)")
    p.add_argument("--init", choices=["lstsq", "zero"], default="lstsq")
    p.add_argument("--init-tokens", type=int, default=32768, help="tokens for the least-squares init")
    p.add_argument("--ridge", type=float, default=1e-3)
    p.add_argument("--mid", action="store_true", help="also train resid_mid readings where they exist")
    p.add_argument("--split", choices=["all", "train", "heldout"], default="all",
                   help="which documents of the corpus to use (default all; the default corpus uses train)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps (into OUT.ckpt)")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default: OUT.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
    e.add_argument("--quiet", action="store_true")
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
    """Train and save a tuned lens."""
    if args.resume and args.checkpoint_every <= 0 and args.checkpoint_dir is None:
        args.checkpoint_every = max(1, args.steps // 10)
    if args.tokens_per_step % args.seq_len:
        raise CliError(f"--tokens-per-step ({args.tokens_per_step}) must be a multiple of --seq-len "
                       f"({args.seq_len}).")
    from .fit import train_tuned_lens

    model = model_from_args(args)
    corpus = _corpus(args, "train")
    ckpt = args.checkpoint_dir or (f"{args.out.rstrip('/')}.ckpt" if (args.checkpoint_every or args.resume) else None)
    lens = train_tuned_lens(model, corpus, steps=args.steps, tokens_per_step=args.tokens_per_step,
                            seq_len=args.seq_len, lr=args.lr, init=args.init, init_tokens=args.init_tokens,
                            ridge=args.ridge, sites="all" if args.mid else "resid_post", checkpoint_dir=ckpt,
                            checkpoint_every=args.checkpoint_every, resume=args.resume, progress=not args.quiet)
    from lmscope.interventions.distributed import DataParallel

    dp = DataParallel.from_env()  # under torchrun every process holds the same lens: rank 0 writes it
    if not dp.is_main:
        return 0
    lens.save(args.out)
    info = lens.meta.get("training", {})
    print(f"saved tuned lens ({lens.n_readings} readings) to {args.out}; "
          f"{info.get('tokens', 0):,} tokens, final train KL {info.get('final_train_kl')}", file=sys.stderr)
    return 0


def cmd_eval_lens(args: argparse.Namespace) -> int:
    """Evaluate a lens (beside the logit lens) and print a per-reading table."""
    if args.plot and not args.plot.lower().endswith(".png"):
        raise CliError(f"--plot {args.plot!r}: the file must end in .png.")
    check_lens_arg(args.lens, args.model)
    seq_len = eval_seq_len(args.max_tokens, args.seq_len)
    from .evaluate import evaluate_lens, plot_report, save_report

    model = model_from_args(args)
    lens = lens_from_spec(args.lens, model, is_default_model_name(args.model), "resid_post")
    corpus = _corpus(args, "heldout")
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
