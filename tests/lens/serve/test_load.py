"""Bounded load test (localhost only, stops by itself): N clients for T seconds, every answer equal to a direct
decode, no errors, and the server process's memory after the run within a few percent of before."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from typing import Any

import pytest
from serve_helpers import post

from lmscope.interventions import HookedModel, Steer
from lmscope.lens.lenses import LogitLens
from lmscope.lens.serve.runner import ServerThread
from lmscope.lens.serve.state import ServerState

CLIENTS = int(os.environ.get("LMSCOPE_LOAD_CLIENTS", "4"))
SECONDS = float(os.environ.get("LMSCOPE_LOAD_SECONDS", "6"))
PROMPTS = ["The capital of France is", "One, two, three, four,", "def add(a, b):\n    return"]


def rss_mb() -> float:
    psutil = pytest.importorskip("psutil")
    return psutil.Process().memory_info().rss / 2**20


def settled_rss() -> float:
    """RSS after a garbage collection and glibc's malloc_trim (freed memory handed back where possible)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
    return rss_mb()


def run_clients(server: Any, bodies: list[Any], expected: list[Any], seconds: float) -> tuple[list[int], list[str]]:
    """CLIENTS threads posting ``bodies`` round-robin for ``seconds``; (requests per client, failures)."""
    counts = [0] * CLIENTS
    failures: list[str] = []
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        k = i
        while time.monotonic() < stop:
            r = post(server, bodies[k % len(bodies)])
            if r.status_code != 200 or r.json()["trajectories"] != expected[k % len(bodies)]:
                failures.append(f"client {i} request {k}: {r.status_code} {r.text[:200]}")
            counts[i] += 1
            k += 1
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    return counts, failures


@pytest.mark.slow
def test_load(smollm: HookedModel) -> None:
    model = smollm
    lens = LogitLens(model)
    vector = model.unembed_weight[model.token_id(" Berlin")].detach().float()
    vector = vector / vector.norm()
    state = ServerState(model, {"logit": lens}, steering={"berlin": [Steer("resid_post.18", vector, 10.0)]})
    bodies = [{"prompts": [p], "top_k": 3, "layers": "-6--1", "targets": [" Paris"]} for p in PROMPTS]
    bodies.append({"prompts": PROMPTS[:2], "top_k": 3, "positions": "last", "steer": {"name": "berlin", "scale": 5}})
    expected = [[t.to_dict() for t in lens.decode([p], top_k=3, layers=[-6, -5, -4, -3, -2, -1],
                                                   targets=[" Paris"])] for p in PROMPTS]
    with model.apply(Steer("resid_post.18", vector, 50.0)):
        expected.append([t.to_dict() for t in lens.decode(PROMPTS[:2], top_k=3, positions="last")])

    with ServerThread(state) as server:
        for body, want in zip(bodies, expected):  # warm-up, and the answers are right before the load starts
            assert post(server, body).json()["trajectories"] == want
        # a first, shorter round under the same concurrency: the allocator's per-thread arenas and torch's
        # buffers reach their working size; memory is compared across the second, full round
        warm, _ = run_clients(server, bodies, expected, max(2.0, SECONDS / 3))
        before = settled_rss()
        counts, failures = run_clients(server, bodies, expected, SECONDS)
        after = settled_rss()
    assert not failures, failures[:3]
    assert all(c >= 1 for c in counts) and all(c >= 1 for c in warm), (warm, counts)
    assert after <= before * 1.05, f"RSS grew from {before:.0f} MB to {after:.0f} MB over {sum(counts)} requests"
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules()) == 0
