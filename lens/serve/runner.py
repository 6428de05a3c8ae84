"""Run the app with uvicorn: in the foreground (``lmscope serve``) or in a background thread (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from .app import create_app
from .state import ServerState


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def uvicorn_config(state: ServerState, host: str, port: int, token: str | None, log_level: str = "warning") -> Any:
    app = create_app(state, token=token, port=port, host=host)
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          timeout_graceful_shutdown=5)


class ServerThread:
    """A server on ``host:port`` (a free localhost port by default) in a daemon thread; ``stop()`` ends it."""

    def __init__(self, state: ServerState, host: str = "127.0.0.1", port: int | None = None,
                 token: str | None = None) -> None:
        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn_config(state, self.host, self.port, token))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="lmscope-serve")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"lmscope serve did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
