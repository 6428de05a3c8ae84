"""``lmscope decode`` through a running server: same output and errors as decoding locally; falls back otherwise."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

import pytest

from lmscope.interventions import HookedModel, cli
from lmscope.interventions.cli import CliError
from lmscope.lens.serve.client import decode_via_server, server_address
from lmscope.lens.serve.runner import ServerThread, free_port
from lmscope.lens.serve.state import ServerState


def decode_args(**kw: Any) -> argparse.Namespace:
    base = dict(model="default", dtype="float32", device="cpu", prompt="hello", lens="logit", top_k=5,
                positions="all", layers=None, mid=False, target=None, json=False, plot=None, server=None)
    return argparse.Namespace(**{**base, **kw})


def test_server_address() -> None:
    assert server_address("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert server_address("http://localhost:8765/") == ("localhost", 8765)
    assert server_address("off") is None and server_address("nonsense") is None


def test_nothing_listening_falls_back() -> None:
    assert decode_via_server(decode_args(server=f"127.0.0.1:{free_port()}")) is None


def test_mismatch_falls_back_and_lmscope_errors_are_raised(llama_tiny: HookedModel) -> None:
    with ServerThread(ServerState(llama_tiny, {})) as server:
        addr = f"127.0.0.1:{server.port}"
        assert decode_via_server(decode_args(server=addr, model="some/other-model")) is None  # 409
        assert decode_via_server(decode_args(server=addr, lens="tuned")) is None  # no such lens here: 409
        assert decode_via_server(decode_args(server=addr, prompt="x" * 5000)) is None  # over the limits: 422
        assert decode_via_server(decode_args(server=addr, plot="h.png")) is None  # plots are local
        with pytest.raises(CliError, match="no tokenizer"):  # the tiny model has none: the same error as locally
            decode_via_server(decode_args(server=addr))


@pytest.mark.slow
def test_decode_via_server_equals_local(smollm: HookedModel, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from lmscope.lens.lenses import LogitLens
    from lmscope.lens.training.fit import default_lens

    state = ServerState(smollm, {"logit": LogitLens(smollm), "tuned": default_lens(smollm, progress=False)},
                        lens_specs={"logit": "logit", "tuned": "tuned"})
    flag_sets = [["--json", "--positions", "last", "--target", " Paris", "--layers", "0,-1"],
                 ["--lens", "tuned", "--top-k", "2", "--layers", "20-29"],
                 ["--mid", "--layers", "-2", "--positions", "last"]]
    monkeypatch.setattr(HookedModel, "from_pretrained", classmethod(lambda cls, *a, **k: smollm))
    local = []
    for flags in flag_sets:
        assert cli.main(["decode", "The capital of France is", *flags, "--server", "off"]) == 0
        local.append(capsys.readouterr().out)
    with ServerThread(state) as server:
        env = {**os.environ, "LMSCOPE_SERVER": f"127.0.0.1:{server.port}"}
        for flags, expected in zip(flag_sets, local):
            proc = subprocess.run([sys.executable, "-m", "lmscope.interventions.cli", "decode",
                                   "The capital of France is", *flags, "--timings"],
                                  capture_output=True, text=True, timeout=120, env=env)
            assert proc.returncode == 0, proc.stderr
            assert "(served)" in proc.stderr
            assert proc.stdout == expected
        proc = subprocess.run([sys.executable, "-m", "lmscope.interventions.cli", "decode", "hi", "--layers", "30"],
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2 and "out of range" in proc.stderr and proc.stdout == ""
