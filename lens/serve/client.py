"""The stdlib-only client ``lmscope decode`` uses to reach a running ``lmscope serve`` (no torch import).

``LMSCOPE_SERVER`` (default ``127.0.0.1:8765``; ``off`` disables) names the server, ``LMSCOPE_SERVER_TOKEN``
its token. Nothing answering, another model or lens on the server, or a request over its limits: the
caller decodes locally (None). An lmscope error from the server (HTTP 400) is the same error the local
decode would raise, so it is raised here.
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_ADDRESS = "127.0.0.1:8765"
CONNECT_TIMEOUT = 0.5
READ_TIMEOUT = 600.0


def server_address(explicit: str | None = None) -> tuple[str, int] | None:
    """``(host, port)`` of the configured server, or None when disabled / malformed."""
    addr = explicit if explicit is not None else os.environ.get("LMSCOPE_SERVER", DEFAULT_ADDRESS)
    addr = addr.strip().removeprefix("http://").rstrip("/")
    if addr.lower() in ("", "off", "none", "0"):
        return None
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def model_spec(model: str) -> str:
    """How a server names a ``--model``: 'default', an HF name, or an absolute path."""
    return model if model == "default" or not os.path.exists(model) else str(Path(model).resolve())


def lens_spec(lens: str) -> str:
    return lens if lens in ("logit", "tuned") else str(Path(lens).resolve())


def post(address: tuple[str, int], path: str, body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
    """POST JSON; ``(status, decoded JSON)``. Raises OSError when nothing answers."""
    conn = http.client.HTTPConnection(address[0], address[1], timeout=CONNECT_TIMEOUT)
    try:
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(READ_TIMEOUT)
        headers = {"Content-Type": "application/json"}
        token = token if token is not None else os.environ.get("LMSCOPE_SERVER_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request("POST", path, json.dumps(body), headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def decode_via_server(args: Any) -> tuple[str, float] | None:
    """``(stdout text, server seconds)`` of ``lmscope decode args`` from a running server, or None."""
    from lmscope.interventions.cli import CliError

    address = server_address(getattr(args, "server", None))
    if address is None or args.plot:  # plots are drawn locally
        return None
    body = {"model": model_spec(args.model), "dtype": args.dtype, "device": args.device, "prompt": args.prompt,
            "lens": lens_spec(args.lens), "top_k": args.top_k, "positions": args.positions, "layers": args.layers,
            "mid": args.mid, "target": args.target, "json_output": args.json}
    try:
        status, data = post(address, "/api/v1/cli/decode", body)
    except (OSError, ValueError, http.client.HTTPException):
        return None
    if status == 200 and isinstance(data, dict) and isinstance(data.get("text"), str):
        return data["text"], float(data.get("seconds", 0.0))
    if status == 400 and isinstance(data, dict) and "detail" in data:
        raise CliError(str(data["detail"]))
    return None
