"""``lmscope serve``: keep a model and its lenses loaded; serve the JSON API and the web lens explorer.

Registered through the ``lmscope.commands`` entry points; nothing heavier than argparse is imported
until the command runs. The port is taken before the model loads, so a busy one (a second ``lmscope serve``)
fails at once in one line, and the server then listens on that very socket (nothing can take it meanwhile).
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path
from typing import Any

from lmscope.interventions.cli import CliError, add_model_args, check_model_arg, model_from_args

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(sub: Any) -> None:
    """Add ``serve`` to the ``lmscope`` sub-command parsers."""
    p = sub.add_parser("serve", help="Serve a resident model: JSON API + the web circuit workbench (decode uses it).",
                       description="Load the model and lenses once and answer lens decodes, attention, attribution, "
                                   "patching and circuit views over HTTP; open http://HOST:PORT/ for the workbench. "
                                   "`lmscope decode` uses a server that answers on LMSCOPE_SERVER (default "
                                   "127.0.0.1:8765).")
    add_model_args(p)
    p.add_argument("--lens", action="append", default=None, metavar="LENS",
                   help="'logit', 'tuned' (default model's lens) or a tuned-lens folder; repeatable "
                        "(default: logit, plus tuned for the default model)")
    p.add_argument("--steer", action="append", default=[], metavar="NAME=FOLDER",
                   help="a saved intervention folder (save_interventions / Intervention.save) or a steering vector "
                        "folder (lmscope steer --save) offered as NAME")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="requests may name saved intervention folders inside DIR (never outside); "
                        "the server writes no files")
    p.add_argument("--host", default=DEFAULT_HOST, help="bind address (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--token", default=os.environ.get("LMSCOPE_SERVER_TOKEN"),
                   help="require 'Authorization: Bearer TOKEN' on /api/ (env LMSCOPE_SERVER_TOKEN)")
    p.add_argument("--max-concurrent", type=int, default=4,
                   help="light requests (decodes, views) computed at once (default 4); --threads defaults to cores / "
                        "this; heavy jobs (patching, graphs) run on a thread of their own")
    p.set_defaults(func=cmd_serve)


def parse_steer(items: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise CliError(f"--steer {item!r}: use NAME=FOLDER.")
        if not Path(folder).is_dir():
            raise CliError(f"--steer {item!r}: no folder {folder!r}.")
        out[name] = Path(folder)
    return out


def cmd_serve(args: argparse.Namespace) -> int:
    from lmscope.lens.cli import check_lens_arg, is_default_model_name

    if args.host not in LOCAL_HOSTS and not args.token:
        raise CliError(f"Binding to {args.host!r} exposes the model beyond this machine: give --token (or set "
                       "LMSCOPE_SERVER_TOKEN), or keep the default --host 127.0.0.1.")
    if not 0 < args.port < 65536:
        raise CliError(f"--port must be in 1..65535, got {args.port}.")
    if args.max_concurrent < 1:
        raise CliError("--max-concurrent must be at least 1.")
    lens_specs = args.lens or (["logit", "tuned"] if is_default_model_name(args.model) else ["logit"])
    for spec in lens_specs:
        check_lens_arg(spec, args.model)
    steer_folders = parse_steer(args.steer)
    if args.root is not None and not Path(args.root).is_dir():
        raise CliError(f"--root {args.root!r} is not a folder.")
    check_model_arg(args.model)
    if args.threads is None:  # parallelism comes from concurrent requests: do not oversubscribe the cores
        args.threads = max(1, (os.cpu_count() or 1) // args.max_concurrent)
    with listen_on(args.host, args.port) as sock:  # before the model loads: a busy port fails at once
        state = build_state(args, lens_specs, steer_folders)
        import uvicorn

        from .runner import uvicorn_config

        print(f"lmscope serve: {state.model_spec} with lenses {', '.join(state.lenses)} on "
              f"http://{args.host}:{args.port}/", file=sys.stderr)
        uvicorn.Server(uvicorn_config(state, args.host, args.port, args.token, log_level="info")).run(sockets=[sock])
    return 0


def listen_on(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening (as uvicorn binds: ``SO_REUSEADDR``, IPv6 for an
    address with ``:``); a port in use, or one this user may not take, is a one-line :class:`CliError`."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise CliError(f"Port {port} on {host} is already in use (another `lmscope serve`?): stop that server "
                           "or pick another --port.") from None
        raise CliError(f"Cannot listen on {host}:{port}: {err.strerror or err}.") from None
    return sock


def build_state(args: argparse.Namespace, lens_specs: list[str], steer_folders: dict[str, Path]) -> Any:
    """Load the model, the lenses and the steering folders named on the command line."""
    from dataclasses import replace

    from lmscope.lens.cli import is_default_model_name, lens_from_spec

    from .schema import LIMITS
    from .state import ServerState, read_interventions
    from .steering import is_vector_folder

    model = model_from_args(args)
    model_spec = args.model if args.model == "default" or not os.path.exists(args.model) else \
        str(Path(args.model).resolve())
    lenses: dict[str, Any] = {}
    specs: dict[str, str] = {}
    for spec in lens_specs:
        name = spec if spec in ("logit", "tuned") else Path(spec).resolve().name
        lenses[name] = lens_from_spec(spec, model, is_default_model_name(args.model))
        specs[spec if spec in ("logit", "tuned") else str(Path(spec).resolve())] = name
    vectors = {name: folder for name, folder in steer_folders.items() if is_vector_folder(folder)}
    steering = {name: read_interventions(folder) for name, folder in steer_folders.items() if name not in vectors}
    return ServerState(model, lenses, model_spec=model_spec, dtype=args.dtype, device=args.device,
                       steering=steering, root=args.root, lens_specs=specs, vector_folders=vectors,
                       limits=replace(LIMITS, max_concurrent=args.max_concurrent))
