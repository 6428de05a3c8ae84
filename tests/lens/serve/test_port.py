"""``lmscope serve`` takes its port before loading the model: a busy port is one line and exit status 2, at once;
a free one is the socket uvicorn then serves on."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="pip install -e '.[serve]'")

import uvicorn  # noqa: E402

from lmscope.interventions import HookedModel, cli  # noqa: E402
from lmscope.interventions.cli import CliError  # noqa: E402
from lmscope.lens.serve import cli as serve_cli  # noqa: E402
from lmscope.lens.serve.state import ServerState  # noqa: E402


def _busy_port() -> socket.socket:
    """A socket listening on a free 127.0.0.1 port, as a first ``lmscope serve`` holds it."""
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn sets it: still refused
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    return other


def _busy_message(port: int) -> str:
    return (f"lmscope: error: Port {port} on 127.0.0.1 is already in use (another `lmscope serve`?): stop that "
            "server or pick another --port.\n")


def test_a_busy_port_fails_in_one_line_before_the_model_loads(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the port was checked")
    monkeypatch.setattr(serve_cli, "build_state", no_load)
    with _busy_port() as other:
        port = other.getsockname()[1]
        assert cli.main(["serve", "--port", str(port), "--lens", "logit"]) == 2
    assert capsys.readouterr().err == _busy_message(port)


def test_a_busy_port_exits_2_from_the_command_line() -> None:
    """The real command in its own process: status 2, the one line on stderr, no traceback, within seconds."""
    env = {**os.environ, "LMSCOPE_SERVER": "off"}
    with _busy_port() as other:
        port = other.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "lmscope.interventions.cli", "serve", "--port", str(port),
                               "--lens", "logit"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == _busy_message(port) and proc.stdout == ""


def test_a_held_port_is_refused_to_a_second_server_and_other_errors_are_one_line() -> None:
    with serve_cli.listen_on("127.0.0.1", 0) as first:  # held while the first server would load its model
        port = first.getsockname()[1]
        with pytest.raises(CliError, match=f"^Port {port} on 127.0.0.1 is already in use"):
            serve_cli.listen_on("127.0.0.1", port)
    with pytest.raises(CliError, match=r"^Cannot listen on no-such-host\.invalid:8765: .+\.$"):
        serve_cli.listen_on("no-such-host.invalid", 8765)


def test_the_server_answers_on_the_socket_it_took(llama_tiny: HookedModel, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``cmd_serve`` hands uvicorn the socket it bound first: a request on that port is answered, and the port is
    free again once the server stops."""
    monkeypatch.setattr(serve_cli, "build_state", lambda *args: ServerState(llama_tiny, {}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    answers: list[int] = []
    real_run = uvicorn.Server.run

    def run_then_ask(self: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        assert sockets is not None and [s.getsockname()[1] for s in sockets] == [port]

        def ask() -> None:
            while not self.started and not self.should_exit:
                threading.Event().wait(0.02)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/api/v1/info")
            answers.append(conn.getresponse().status)
            conn.close()
            self.should_exit = True
        threading.Thread(target=ask, daemon=True).start()
        real_run(self, sockets=sockets)
    monkeypatch.setattr(uvicorn.Server, "run", run_then_ask)
    assert cli.main(["serve", "--port", str(port), "--lens", "logit"]) == 0
    assert answers == [200]
    assert f"on http://127.0.0.1:{port}/" in capsys.readouterr().err
    with serve_cli.listen_on("127.0.0.1", port):  # released
        pass
