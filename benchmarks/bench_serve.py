"""``lmscope decode`` with a running ``lmscope serve`` vs a cold process; server throughput and latency.

Run: python benchmarks/bench_serve.py [--cold 3] [--served 9] [--seconds 15] [--clients 1 4 16]

Starts ``lmscope serve`` (default model, 127.0.0.1, a free port) as a subprocess, then
1. runs the same ``lmscope decode PROMPT`` as fresh processes: ``--server off`` (cold: imports torch and
   loads the model) and against the server (the CLI only imports the stdlib client); both outputs must be
   identical; reports the median wall time of each and their ratio;
2. for each client count, that many threads post ``/api/v1/decode`` (the same prompt, logit lens, every
   layer and position) for ``--seconds``: decodes/s, p50 and p99 latency, and the server's RSS before/after.
Only ever binds and connects to 127.0.0.1; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

PROMPT = "The capital of France is"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lmscope_cmd() -> list[str]:
    script = Path(sys.executable).with_name("lmscope")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lmscope.interventions.cli"]


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("lmscope serve exited during start-up")
        try:
            with urllib.request.urlopen(url + "/api/v1/info", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("lmscope serve did not answer")


def timed_decode(env: dict[str, str], extra: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run([*lmscope_cmd(), "decode", PROMPT, *extra], env=env, capture_output=True, text=True,
                         check=True)
    return time.perf_counter() - t, out.stdout


def post(url: str, body: dict[str, Any]) -> float:
    req = urllib.request.Request(url + "/api/v1/decode", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
    return time.perf_counter() - t


def load(url: str, clients: int, seconds: float) -> dict[str, float]:
    body = {"prompts": [PROMPT], "lens": "logit", "top_k": 5}
    lat: list[float] = []
    errors: list[str] = []
    stop = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < stop:
            try:
                lat.append(post(url, body))
            except Exception as err:  # counted, reported
                errors.append(repr(err))
    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"clients": clients, "requests": len(lat), "errors": len(errors), "decodes_per_s": len(lat) / wall,
            "p50_s": lat[len(lat) // 2] if lat else float("nan"),
            "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cold", type=int, default=3, help="cold decode processes (default 3)")
    p.add_argument("--served", type=int, default=9, help="decode processes against the server (default 9)")
    p.add_argument("--seconds", type=float, default=15.0, help="load duration per client count (default 15)")
    p.add_argument("--clients", type=int, nargs="*", default=[1, 4, 16])
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LMSCOPE_SERVER": "off"}
    serve = [*lmscope_cmd(), "serve", "--host", "127.0.0.1", "--port", str(port), "--lens", "logit"]
    if args.threads:
        serve += ["--threads", str(args.threads)]
    proc = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(url, proc)
        served_env = {**os.environ, "LMSCOPE_SERVER": f"127.0.0.1:{port}"}
        cold = [timed_decode(env, []) for _ in range(args.cold)]
        served = [timed_decode(served_env, []) for _ in range(args.served)]
        assert len({out for _, out in cold + served}) == 1, "served output differs from the cold output"
        c_med, s_med = statistics.median(t for t, _ in cold), statistics.median(t for t, _ in served)
        print(f"lmscope decode, cold process (median of {args.cold}): {c_med:.2f} s  "
              f"[{', '.join(f'{t:.2f}' for t, _ in cold)}]")
        print(f"lmscope decode, with a server (median of {args.served}): {s_med:.3f} s  "
              f"[{', '.join(f'{t:.2f}' for t, _ in served)}]   speed-up x{c_med / s_med:.1f}")
        print(f"server RSS before load: {rss_mb(proc.pid):.0f} MB")
        print("| clients | requests | errors | decodes/s | p50 (s) | p99 (s) | server RSS after (MB) |")
        print("|---|---|---|---|---|---|---|")
        for n in args.clients:
            r = load(url, n, args.seconds)
            print(f"| {n} | {r['requests']} | {r['errors']} | {r['decodes_per_s']:.2f} | {r['p50_s']:.3f} | "
                  f"{r['p99_s']:.3f} | {rss_mb(proc.pid):.0f} |", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    if shutil.which("uptime"):
        print("load average during the run:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
