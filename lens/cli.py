"""The ``lmscope`` command line. ``decode`` lives here; other modules add subcommands via ``register(sub)``.

Startup is kept lean: torch/transformers are imported inside the command, after argument parsing,
so ``lmscope --help`` and argument errors are instant. Plug-ins: ``lens.train_cli`` (``train-lens``,
``eval-lens``) and ``interventions.steering_cli`` (``steer``) are registered when they import.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

#: Modules whose ``register(subparsers)`` adds subcommands (skipped when the module is absent).
PLUGINS = ("lens.train_cli", "interventions.steering_cli")


class CliError(Exception):
    """A user error the CLI reports as ``error: ...`` with exit status 2."""


def parse_layers(text: str | None) -> list[int] | None:
    """``"0,5,10"``, ``"0-10"``, ``"-1"`` or mixes (``"0-3,8,-1"``) to layer numbers; None/"all" = every layer."""
    if text is None or text.strip() in ("", "all"):
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:  # a range (a leading '-' is a negative layer)
                cut = part.index("-", 1)
                lo, hi = int(part[:cut]), int(part[cut + 1:])
                if hi < lo:
                    raise CliError(f"--layers range {part!r} is empty (end before start).")
                out += list(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise CliError(f"Cannot read --layers {text!r}: use e.g. '0,5,10', '0-10' or '-1'.") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    """The full ``lmscope`` parser (decode + every plug-in that imports)."""
    parser = argparse.ArgumentParser(prog="lmscope", description="Activation analysis for causal language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _register_decode(sub)
    for name in PLUGINS:
        if not _module_exists(name):
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            if getattr(err, "name", None) != name:  # the module exists but one of its imports failed
                print(f"lmscope: warning: {name} failed to import ({err}); its commands are unavailable.",
                      file=sys.stderr)
            continue
        module.register(sub)
    return parser


def _module_exists(name: str) -> bool:
    """Whether ``pkg.mod`` exists, found without importing ``pkg`` (importing ``interventions`` loads torch)."""
    import importlib.util

    pkg, _, mod = name.rpartition(".")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(d) / f"{mod}.py").is_file() or (Path(d) / mod / "__init__.py").is_file()
               for d in spec.submodule_search_locations)


def _register_decode(sub: Any) -> None:
    p = sub.add_parser("decode", help="Decode a prompt with the logit or tuned lens (layers x positions).",
                       description="Decode PROMPT layer by layer and print a table (readings down, positions "
                                   "across, top token + probability), or JSON.")
    p.add_argument("prompt", help="the text to decode")
    p.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), an HF name or a path")
    p.add_argument("--lens", default="logit", help="'logit', 'tuned' (the default lens of the default model), "
                                                   "or a saved tuned-lens folder")
    p.add_argument("--top-k", type=int, default=5, help="top tokens kept per cell (default 5)")
    p.add_argument("--positions", default="all", choices=["all", "last"], help="decode every token or the last")
    p.add_argument("--layers", default=None, help="layer numbers: '0,5,10', '0-10', '-1' (default: all)")
    p.add_argument("--mid", action="store_true", help="also read resid_mid (after attention) where it exists")
    p.add_argument("--target", action="append", default=None, metavar="TOKEN",
                   help="track the rank/probability of this single token (repeatable)")
    p.add_argument("--plot", default=None, metavar="FILE", help="write a heatmap: FILE.png or FILE.html")
    p.add_argument("--color", default="prob", choices=["prob", "kl"], help="heatmap colour (default prob)")
    p.add_argument("--json", action="store_true", help="print the trajectory as JSON instead of a table")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--timings", action="store_true", help="print import/load/forward timings to stderr")
    p.set_defaults(func=cmd_decode)


def _load_lens(spec: str, model: Any, is_default_model: bool, sites: Any) -> Any:
    from .logit import LogitLens
    from .tuned import TunedLens

    if spec == "logit":
        return LogitLens(model, sites=sites)
    if spec == "tuned":
        if not is_default_model:
            raise CliError("--lens tuned without a folder only exists for the default model; pass the folder of "
                           "a lens trained for this model (lmscope train-lens), or --lens logit.")
        try:
            from .train import default_lens
        except ImportError:
            raise CliError("The default tuned lens is not available in this install (lens.train is missing); "
                           "use --lens logit or --lens FOLDER.") from None
        return default_lens(model)
    if os.path.isdir(spec):
        return TunedLens.load(spec, model)
    raise CliError(f"Unknown --lens {spec!r}: use 'logit', 'tuned', or an existing lens folder.")


def cmd_decode(args: argparse.Namespace) -> int:
    """``lmscope decode``: one forward, then a table / JSON / heatmap."""
    if not args.prompt:
        raise CliError("The prompt is empty; give some text to decode.")
    if args.top_k < 1:
        raise CliError(f"--top-k must be at least 1, got {args.top_k}.")
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".html"):
        raise CliError(f"--plot {args.plot!r}: the file must end in .png or .html.")
    layers = parse_layers(args.layers)
    if args.lens not in ("logit", "tuned") and not os.path.isdir(args.lens):
        raise CliError(f"Unknown --lens {args.lens!r}: use 'logit', 'tuned', or an existing lens folder.")
    if args.model != "default" and (os.sep in args.model or args.model.startswith(".")) \
            and not os.path.exists(args.model):
        raise CliError(f"No model at {args.model!r}: give 'default', an HF model name, or an existing folder/.gguf.")
    t1 = time.time()
    is_default = args.model == "default"
    model = load_model(args.model, args.dtype, args.device)
    lens = _load_lens(args.lens, model, is_default, "all" if args.mid else "resid_post")
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
        t0 = _process_start()
        print(f"timings: startup+import {t1 - t0:.2f}s  load {t2 - t1:.2f}s  decode {t3 - t2:.2f}s  "
              f"output {t4 - t3:.2f}s  total {t4 - t0:.2f}s", file=sys.stderr)
    return 0


def _process_start() -> float:
    """Wall-clock start of this process (Linux /proc; falls back to now)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - start)
    except (OSError, ValueError, IndexError):
        return time.time()


def _join_negative_values(argv: list[str]) -> list[str]:
    """Let ``--layers -2,-1`` through (argparse would take ``-2,-1`` for an option): join it to ``--layers=``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--layers" and i + 1 < len(argv) and re.fullmatch(r"-\d[\d,\s-]*", argv[i + 1]):
            out.append(f"--layers={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def load_model(name: str, dtype: str = "float32", device: str = "cpu", threads: int | None = None) -> Any:
    """The model behind ``--model`` ('default', an HF name, a folder or a .gguf), progress bars off.

    Shared by every lens sub-command; a model that cannot be loaded becomes a :class:`CliError`.
    """
    import torch

    from interventions import HookedModel

    if threads:
        torch.set_num_threads(threads)
    try:  # the weight-loading progress bar is noise on a CLI
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        return HookedModel.from_pretrained(name, dtype=getattr(torch, dtype), device=device)
    except OSError as err:  # missing folder / hub name without a network
        raise CliError(f"Cannot load model {name!r}: {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lmscope``; returns the exit status (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        if not isinstance(err, CliError):
            from interventions.errors import LmscopeError  # imported late: importing interventions loads torch

            if not isinstance(err, LmscopeError):
                raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err  # KeyError repr-quotes its text
        print(f"lmscope: error: {msg}", file=sys.stderr)
        return 2


def console_main() -> None:
    """Console-script entry: run :func:`main`, flush, and leave without interpreter teardown.

    Tearing down torch and transformers takes over a second on a small CPU and does nothing useful for a
    one-shot command (every file is written and closed by then), so the process exits straight away.
    """
    try:
        code = main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
