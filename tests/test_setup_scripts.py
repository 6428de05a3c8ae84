"""The set-up off this machine: the Makefile installs torch with PyTorch's CPU wheel index as an extra index (only
when it answers, so an offline registry still works), editable installs carry no setuptools warning, and
``make test-latest`` reports the pip-wide caps it ran under, its venv's size, and says the bounds can move only
when a version above them was tested."""

from __future__ import annotations

import http.server
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def dry_run_setup() -> list[str]:
    """The recipe lines ``make`` would run to set up .venv (``make -n``: printed, nothing executed)."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    proc = subprocess.run(["make", "-n", "-B", "BROWSER=0", ".venv/.lmscope-installed"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_torch_comes_from_the_cpu_index_when_it_answers() -> None:
    torch_lines = [line for line in dry_run_setup() if "pip install" in line and '"torch==' in line]
    assert len(torch_lines) == 1
    probe = rf'\$\(\S+ \.ci/reachable "{re.escape(CPU_INDEX)}" && echo --extra-index-url {re.escape(CPU_INDEX)}\)'
    assert re.search(probe + r' "torch==[\d.]+"$', torch_lines[0]), torch_lines[0]
    others = [line for line in dry_run_setup() if "pip install" in line and '"torch==' not in line]
    assert others and not [line for line in others if "--extra-index-url" in line]  # the torch install only


def test_editable_installs_are_quiet() -> None:
    editable = [line for line in dry_run_setup() if "pip install" in line and " -e " in line]
    assert editable and all('ignore:Editable installation"' in line for line in editable)
    latest = (ROOT / ".ci" / "test-latest").read_text()
    assert 'ignore:Editable installation" \\\n  "$VENV/bin/python" -m pip install -q --no-deps -e .' in latest


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_reachable_probe() -> None:
    probe = [sys.executable, str(ROOT / ".ci" / "reachable")]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        up = subprocess.run(probe + [f"http://127.0.0.1:{server.server_port}/whl/cpu"], capture_output=True,
                            text=True, timeout=30)
    finally:
        server.shutdown()
    assert up.returncode == 0 and up.stderr == ""
    down = subprocess.run(probe + [f"http://127.0.0.1:{server.server_port}/whl/cpu"], capture_output=True, text=True,
                          timeout=30)
    assert down.returncode == 1 and down.stderr.startswith(f"note: http://127.0.0.1:{server.server_port}/whl/cpu/ "
                                                           "cannot be reached")
    assert subprocess.run(probe + [""], capture_output=True, timeout=30).returncode == 1  # TORCH_INDEX= : off


@pytest.fixture(scope="module")
def report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("latest_report", ROOT / ".ci" / "latest_report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pip_wide_caps_are_found(report: ModuleType, tmp_path: Path) -> None:
    caps = tmp_path / "constraints.txt"
    caps.write_text("# these releases lie on this machine's disk\ntorch<=2.14.1\n\ntorchvision<=0.29.1\n")
    listing = f"global.cert='/etc/ssl/certs/ca-certificates.crt'\nglobal.constraint='{caps}'\n"
    assert report.pip_caps(listing, {}) == [(str(caps), ["torch<=2.14.1", "torchvision<=0.29.1"])]
    assert report.pip_caps("", {"PIP_CONSTRAINT": str(caps)}) == report.pip_caps(listing, {})
    assert report.pip_caps("global.cert='x'\n", {}) == []


def test_bounds_move_only_when_a_version_above_them_was_tested(report: ModuleType) -> None:
    requirements = ["torch>=2.13,<2.15", "transformers>=5.24,<5.26", "numpy>=1.26"]
    within = report.above_bounds({"torch": "2.14.1+cpu", "transformers": "5.25.0", "numpy": "9.0"}, requirements)
    above = report.above_bounds({"torch": "2.15.0", "transformers": "5.25.0"}, requirements)
    assert within == [] and above == ["torch 2.15.0 (pyproject: <2.15)"]
    assert "can move" not in report.closing_line("latest", within, capped=True)
    assert "(under the caps above)" in report.closing_line("latest", within, capped=True)
    assert "the bounds can move up to them" in report.closing_line("latest", above, capped=False)
    assert report.closing_line("oldest", above, capped=False) == "Nothing broke on these versions."


def test_venv_size(report: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "b.txt").write_bytes(b"y" * 24)
    (tmp_path / "link").symlink_to(tmp_path / "lib" / "a.bin")
    assert report.folder_size(tmp_path) == 1024 + len(os.readlink(tmp_path / "link").encode())


def test_library_progress_bars_only_on_a_terminal() -> None:
    """Off a terminal the CLI turns off the tqdm bars libraries draw (transformers' GGUF conversion)."""
    code = ("from lmscope.interventions import cli; cli.progress_bars_only_on_a_terminal()\n"
            "from tqdm.auto import tqdm\nfor _ in tqdm(range(50), desc='converting'): pass")
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "converting" not in proc.stderr, proc.stderr
