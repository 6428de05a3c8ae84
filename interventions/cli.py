"""The ``lmscope`` command line: one dispatcher, commands registered through an entry-point group.

Each command lives in the package of its method (``lmscope.lens.cli`` has ``decode``,
``lmscope.lens.training.cli`` has ``train-lens``/``eval-lens``, ``lmscope.probes.steering.cli``
has ``steer``...) and is declared in ``pyproject.toml`` under ``[project.entry-points."lmscope.commands"]``
as ``name = "module:register"``. ``register(subparsers)`` adds the command's parser and sets
``func``; nothing heavier than argparse may run at import, so ``lmscope --help`` is instant
(torch and transformers load inside the command). Another installed package can add commands the
same way.

One exit-code rule: 0 on success, 2 on bad input (a :class:`CliError` or any
:class:`~lmscope.interventions.errors.LmscopeError`), printed as ``lmscope: error: ...`` without a
traceback; anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import InputError

ENTRY_POINT_GROUP = "lmscope.commands"


class CliError(InputError):
    """A user error the CLI reports as ``lmscope: error: ...`` with exit status 2."""


def command_registrars() -> dict[str, Callable[[Any], Any]]:
    """Every installed command's ``register`` function, by command name (sorted)."""
    from importlib.metadata import distributions

    # every distribution, not just the first of each name: a stale lmscope.egg-info left in a source folder
    # on sys.path would otherwise hide the installed metadata's newer commands
    eps = [ep for dist in distributions() for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
    found: dict[str, Callable[[Any], Any]] = {}
    for ep in sorted(eps, key=lambda e: e.name):
        if ep.name in found:
            continue
        try:
            found[ep.name] = ep.load()
        except ImportError as err:
            print(f"lmscope: warning: command {ep.name!r} ({ep.value}) failed to import ({err}); "
                  "it is unavailable.", file=sys.stderr)
    return found


def lmscope_version() -> str:
    """The installed lmscope's version (its package metadata; the source tree's ``__version__`` without one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lmscope")
    except PackageNotFoundError:
        from lmscope import __version__

        return str(__version__)


def build_parser() -> argparse.ArgumentParser:
    """The full ``lmscope`` parser: every registered command."""
    parser = argparse.ArgumentParser(prog="lmscope", description="Activation analysis for causal language models.")
    parser.add_argument("--version", action="version", version=f"lmscope {lmscope_version()}",
                        help="print lmscope's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registrars = command_registrars()
    if not registrars:
        print("lmscope: warning: no commands are registered; is lmscope installed (pip install -e .)?",
              file=sys.stderr)
    for register in registrars.values():
        register(sub)
    return parser


def add_model_args(p: argparse.ArgumentParser, threads: bool = True) -> None:
    """The options every model-loading command shares: ``--model``, ``--dtype``, ``--device`` (``--threads``)."""
    p.add_argument("--model", default="default",
                   help="'default' (SmolLM2-135M-Instruct), 'gemma-3-270m', an HF hub id such as "
                        "EleutherAI/pythia-160m (a network, or the HF cache with HF_HUB_OFFLINE=1), a folder "
                        "or a .gguf file")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the dtype the model's weights are loaded in (default float32)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    if threads:
        p.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: the cores other processes leave free, at least 1, at most "
                            "one per core; LMSCOPE_THREADS=N sets it too)")


def check_model_arg(name: str) -> str:
    """What ``--model`` names, checked before anything heavy is imported: an embedded name or existing path as
    is; a hub id (``gpt2``, ``org/name``) as is with a network, else its HF-cache folder; else one-line errors.

    Without a network a hub id that is not cached fails here in about a second (transformers alone would
    retry for ~30 s and print two lines)."""
    from .embedded import embedded_model
    from .errors import OfflineError
    from .hub import HUB_HOST, looks_like_hub_id, offline_requested, resolve_model_name

    if embedded_model(name) is not None or os.path.exists(name):
        return name
    if not looks_like_hub_id(name):
        raise CliError(f"No model at {name!r}: no such folder or file. Give 'default', a hub id "
                       "('gpt2', 'EleutherAI/pythia-160m'), or an existing folder or .gguf file.")
    try:
        return resolve_model_name(name)
    except OfflineError:
        why = "HF_HUB_OFFLINE is set" if offline_requested() else f"there is no network ({HUB_HOST} cannot be reached)"
        raise CliError(f"Cannot load {name!r} from the Hugging Face hub: {why} and it is not in the local HF cache; "
                       "nor is there a folder or file of that name here (a typo in a local path?). Give 'default', "
                       "'gemma-3-270m', an existing folder or .gguf file (--model path/to/folder), or a Hugging Face "
                       "cache that holds it with HF_HUB_OFFLINE=1 (HF_HOME points at the cache).") from None


def check_prompt(text: str, what: str = "The prompt", fix: str = "give some text") -> str:
    """``text`` as given, or a :class:`CliError` when it is empty or only whitespace (``what`` names the option)."""
    if not text.strip():
        raise CliError(f"{what} is {'empty' if not text else 'only whitespace'}; {fix}.")
    return text


def load_model(name: str, dtype: str = "float32", device: str = "cpu", threads: int | None = None) -> Any:
    """The model behind ``--model`` ('default', an HF name, a folder or a .gguf), progress bars off.

    The one model loader of every command; a model that cannot be loaded becomes a :class:`CliError`.
    """
    target = check_model_arg(name)
    import torch

    from .model import HookedModel

    if threads is not None:
        from .threads import use_threads

        use_threads(threads)  # else the first CPU load picks lmscope's default (interventions.threads)
    with contextlib.suppress(ImportError):  # the weight-loading progress bar is noise on a CLI
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return HookedModel.from_pretrained(target, dtype=getattr(torch, dtype), device=device)
    except OSError as err:  # a hub id that does not exist, a folder that is not a model
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if _asked_of_the_hub(name):  # it may also be a mistyped local path
            raise CliError(f"Cannot load model {name!r}: no folder or file of that name here (a typo in a local "
                           f"path?), and as a Hugging Face hub id: {first}") from None
        raise CliError(f"Cannot load model {name!r}: {first}") from None


def _asked_of_the_hub(name: str) -> bool:
    """Whether ``--model name`` went to the Hugging Face hub: not embedded, no such path, shaped like a hub id."""
    from .embedded import embedded_model
    from .hub import looks_like_hub_id

    return embedded_model(name) is None and not os.path.exists(name) and looks_like_hub_id(name)


def model_from_args(args: argparse.Namespace) -> Any:
    """:func:`load_model` with the options of :func:`add_model_args`."""
    return load_model(args.model, args.dtype, args.device, getattr(args, "threads", None))


def process_start() -> float:
    """Wall-clock start of this process (Linux /proc; falls back to now)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - start)
    except (OSError, ValueError, IndexError):
        return time.time()


_NEGATIVE_VALUE_OPTIONS = ("--layers", "--scale")


def _join_negative_values(argv: list[str]) -> list[str]:
    """Let ``--layers -2,-1`` through (argparse would take ``-2,-1`` for an option): join it to ``--layers=``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _NEGATIVE_VALUE_OPTIONS and i + 1 < len(argv) and re.fullmatch(r"-\.?\d[\d.,\s-]*", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def progress_bars_only_on_a_terminal() -> None:
    """Off a terminal (a log file, a pipe, CI), turn off the tqdm bars libraries draw (transformers' GGUF
    conversion...): each writes one carriage-returned line per update, kilobytes in a log. tqdm reads
    ``TQDM_DISABLE`` when it is imported; lmscope's own bars already show only on a terminal."""
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")


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
        from .errors import LmscopeError

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
    progress_bars_only_on_a_terminal()
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
