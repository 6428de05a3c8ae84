"""The workbench endpoints against a real server on the tiny llama: every answer equals the direct library call
(also under ablation and steering), heavy jobs are cached, cancellable and time-limited, bad requests get 4xx
with the reason, and concurrent clients get the sequential answers."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from serve_helpers import in_threads, post, steer_vector

from lmscope.interventions import Ablate, Cache, HookedModel, Steer
from lmscope.lens.changes import layer_change
from lmscope.lens.serve.runner import ServerThread
from lmscope.lens.serve.schema import LIMITS
from lmscope.lens.serve.state import ServerState
from lmscope.lens.serve.steering import NormTable
from lmscope.probes.attribution import (
    attribute,
    head_scores_by_kind,
    neuron_attribution,
    pattern_scores,
    repeated_tokens,
)
from lmscope.probes.patching import head_sweep, logit_diff, resid_pre_sweep
from lmscope.probes.steering.scale import typical_norms

P = [5, 17, 3, 44, 9, 17, 3]  # 17 and 3 repeat: duplicate and induction scores are defined
C = [5, 18, 3, 44, 9, 18, 3]
ABLATE = {"ablate": [[1, 2], [2, 0]], "how": "zero"}


def nan_as_none(values: list[Any]) -> list[Any]:
    return [nan_as_none(v) if isinstance(v, list) else (None if v != v else v) for v in values]


def views(state: ServerState, interventions: dict | None = None) -> dict[str, Any]:
    """Every light view's answer through the server's code path (bodies as the page sends them)."""
    extra = {"interventions": interventions} if interventions else {}
    return {
        "cell": {"prompt": P, "lens": "tuned", "reading": 1, "position": 3, "top_k": 4, **extra},
        "attention": {"prompt": P, "layer": 1, "scores": True, **extra},
        "attribution": {"prompt": P, "target": 11, "contrast": 30, "per_position": True, **extra},
        "neurons": {"prompt": P, "layer": 2, "target": 11, "top_k": 5, **extra},
    }


PATHS = {"cell": "/api/v1/lens/cell", "attention": "/api/v1/attention", "attribution": "/api/v1/attribution",
         "neurons": "/api/v1/neurons"}


def direct(state: ServerState, name: str) -> Any:
    """The library call behind view ``name`` (run by the caller inside the matching session)."""
    m = state.model
    if name == "cell":
        return layer_change(state.lenses["tuned"], P, 1, 3, 4).to_dict()
    if name == "attention":
        cache = m.run([P], [Cache(["attn_pattern.1", "attn_scores.1"])]).cache
        pattern = cache["attn_pattern.1"][0].float()
        scores = {k: nan_as_none(pattern_scores(pattern, torch.tensor(P), k).tolist()) for k in
                  ("previous-token", "duplicate-token", "induction")}
        repeated = head_scores_by_kind(m, repeated_tokens(m, length=20, batch=4, seed=0))
        return {"pattern": pattern.tolist(), "head_scores": scores,
                "repeated_scores": {k: nan_as_none(v[1].tolist()) for k, v in repeated.items()},
                "masked": bool((cache["attn_scores.1"][0] < -1e30).any())}
    if name == "attribution":
        a = attribute(m, P, 11, 30, per_position=True)
        return {"heads": a.heads.tolist(), "mlp": a.mlp.tolist(), "logit": a.logit,
                "head_positions": a.head_positions.tolist()}
    return neuron_attribution(m, P, 2, 11).to_dict(5)


def check(name: str, got: dict[str, Any], want: Any) -> None:
    if name == "cell":
        assert got["change"] == want
    elif name == "attention":
        assert got["pattern"] == want["pattern"] and got["head_scores"] == want["head_scores"]
        assert got["repeated_scores"] == want["repeated_scores"] and got["tokens"] == [str(i) for i in P]
        assert want["masked"] and None in got["scores"][0][0]  # the causal mask is null, not -3.4e38
    elif name == "attribution":
        assert got["heads"] == want["heads"] and got["mlp"] == want["mlp"] and got["logit"] == want["logit"]
        assert got["head_positions"] == want["head_positions"]
    else:
        assert got["neurons"] == want


@pytest.mark.parametrize("name", sorted(PATHS))
def test_each_view_equals_the_library_call(served: Any, name: str) -> None:
    server, state = served
    r = post(server, views(state)[name], PATHS[name])
    assert r.status_code == 200, r.text
    assert r.json()["active"] == [] and r.json()["seconds"] > 0
    check(name, r.json(), direct(state, name))


def expected_steer(state: ServerState, layer: int, scale: float) -> Steer:
    """'named' (Steer at resid_post.0) moved to ``layer``, ``scale`` typical residual norms along its direction."""
    site = f"resid_post.{layer}"
    norm, _ = typical_norms(state.model, NormTable(state.model).prompts(), [site])
    v = steer_vector(state.model)
    return Steer(site, v / v.norm() * norm[site], scale)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_each_view_equals_the_library_call_under_interventions(served: Any, name: str) -> None:
    server, state = served
    spec = {**ABLATE, "steer": {"name": "named", "layer": 1, "scale": 0.5, "unit": "resid"}}
    r = post(server, views(state, spec)[name], PATHS[name])
    assert r.status_code == 200, r.text
    assert r.json()["active"] == ["ablate (zero) L1H2, L2H0",
                                  "steer named at resid_post.1: 0.5 x typical residual norm"]
    with state.model.apply([Ablate(heads=[(1, 2), (2, 0)]), expected_steer(state, 1, 0.5)]):
        want = direct(state, name)
    check(name, r.json(), want)
    if name == "attribution":  # an ablated head writes nothing: its direct effect is exactly 0
        assert r.json()["heads"][1][2] == 0.0 and r.json()["heads"][2][0] == 0.0
        assert r.json()["heads"] != direct(state, name)["heads"]


def test_the_lens_decode_changes_under_an_ablation_and_equals_the_direct_decode(served: Any) -> None:
    server, state = served
    body = {"prompts": [P], "lens": "tuned", "top_k": 3}
    plain = post(server, body).json()
    for how, ablate in (("zero", Ablate(heads=[(0, 1), (1, 3)])),
                        ("mean", Ablate(heads=[(0, 1), (1, 3)], how="mean", reference=[P]))):  # type: ignore[list-item]
        r = post(server, {**body, "interventions": {"ablate": [[0, 1], [1, 3]], "how": how}}).json()
        with state.model.apply(ablate):
            want = [t.to_dict() for t in state.lenses["tuned"].decode([P], top_k=3)]
        assert r["trajectories"] == want and r["trajectories"] != plain["trajectories"]
        assert r["active"] == [f"ablate ({how}) L0H1, L1H3"]


def test_a_steering_vector_folder_steers_as_to_steer(served: Any) -> None:
    from lmscope.probes.steering import SteeringVector

    server, state = served
    v = steer_vector(state.model)
    sv = SteeringVector({"resid_pre.1": v, "resid_pre.2": -v}, resid_norms={"resid_pre.1": 3.0, "resid_pre.2": 5.0})
    sv.save(state.root / "sv")  # type: ignore[operator]
    body = {"prompts": [P], "interventions": {"steer": {"name": "sv", "layer": 2, "scale": 0.7}}}
    r = post(server, body)
    assert r.status_code == 200, r.text
    with state.model.apply(sv.to_steer(0.7, layers=[2], unit="resid")):
        want = [t.to_dict() for t in state.lenses["logit"].decode([P])]
    assert r.json()["trajectories"] == want
    assert r.json()["active"] == ["steer sv at resid_pre.2: 0.7 x typical residual norm"]


def pair_body(**kw: Any) -> dict[str, Any]:
    return {"prompt": P, "corrupt": C, "target": 11, "distractor": 30, "wait": True, **kw}


def test_patching_maps_equal_the_sweeps_and_the_same_request_is_cached(served: Any) -> None:
    server, state = served
    r = post(server, pair_body(), "/api/v1/patching").json()
    assert r["state"] == "done" and not r["cached"] and r["progress"] == 1.0, r
    metric = logit_diff(state.model, 11, 30)
    resid = resid_pre_sweep(state.model, P, C, metric)
    heads = head_sweep(state.model, P, C, metric)
    got = r["result"]
    assert got["resid_pre"]["values"] == resid.values.tolist() and got["resid_pre"]["rows"] == resid.row_labels
    assert got["resid_pre"]["base_metric"] == resid.base_metric and got["resid_pre"]["cols"] == resid.col_labels
    assert got["heads"]["by_head"] == heads.by_head().tolist() and got["heads"]["rows"] == heads.row_labels
    again = post(server, pair_body(wait=False), "/api/v1/patching").json()  # wait is not part of the request
    assert again["cached"] and again["job"] == r["job"] and again["result"] == got
    polled = requests.get(f"{server.url}/api/v1/jobs/{r['job']}", timeout=10).json()
    assert polled["state"] == "done" and polled["result"] == got


def test_patching_under_an_ablation_equals_the_one_forward_per_patch_loop(served: Any) -> None:
    """The exact engine's partial forwards under a session give the reference loop's numbers."""
    server, state = served
    for how in ("zero", "mean"):
        spec = {"ablate": [[0, 2]], "how": how, "steer": {"name": "named", "scale": 0.5, "unit": "raw"}}
        got = post(server, pair_body(interventions=spec), "/api/v1/patching").json()["result"]
        ablate = Ablate(heads=[(0, 2)], how=how, reference=[P] if how == "mean" else None)  # type: ignore[list-item]
        with state.model.apply([ablate, Steer("resid_post.0", steer_vector(state.model), 1.0)]):
            loop = resid_pre_sweep(state.model, P, C, logit_diff(state.model, 11, 30), method="loop")
            heads = head_sweep(state.model, P, C, logit_diff(state.model, 11, 30), method="loop")
        torch.testing.assert_close(torch.tensor(got["resid_pre"]["values"]), loop.values, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.tensor(got["heads"]["by_head"]), heads.by_head(), rtol=1e-5, atol=1e-5)
        plain = post(server, pair_body(), "/api/v1/patching").json()["result"]
        assert got["resid_pre"]["values"] != plain["resid_pre"]["values"]


def test_graph_and_flow_jobs_equal_the_library(served: Any) -> None:
    from lmscope.probes.circuits import edge_attribution, flow_routes

    server, state = served
    r = post(server, pair_body(edges=12, ig_steps=3), "/api/v1/graph").json()
    assert r["state"] == "done", r
    scores = edge_attribution(state.model, [P], [C], logit_diff(state.model, 11, 30), ig_steps=3)
    top = {name: mean for name, mean, _ in scores.top(12)}
    drawn = {e["name"]: e["score"] for e in r["result"]["edges"]}
    assert set(drawn) == set(top) and all(drawn[k] == pytest.approx(top[k], abs=1e-6) for k in top)
    assert r["result"]["circuit"] == scores.circuit(k=12, prune=True).to_dict()
    f = post(server, {"prompt": P, "threshold": 0.05, "wait": True}, "/api/v1/flow").json()
    want = flow_routes(state.model, P, threshold=0.05).to_dict()
    assert {k: v for k, v in f["result"].items() if k != "active"} == want
    bad = post(server, {"prompt": P, "wait": True, "interventions": ABLATE}, "/api/v1/flow")
    assert bad.status_code == 400 and "Clear the ablation" in bad.json()["detail"]


def blocker(state: ServerState) -> tuple[threading.Event, threading.Event, Any]:
    """A job holding the (single) job thread until released; (started, release, job)."""
    started, release = threading.Event(), threading.Event()

    def work(ctx: Any) -> dict[str, Any]:
        started.set()
        while not release.wait(0.02):
            ctx.check()
        return {}
    job, _ = state.jobs.submit("test", f"block-{time.monotonic()}", work)
    assert started.wait(10)
    return started, release, job


def test_jobs_are_cancelled_queued_or_running_and_never_stall_a_decode(served: Any) -> None:
    server, state = served
    _, release, job = blocker(state)
    t = time.perf_counter()
    assert post(server, {"prompts": [P]}).status_code == 200  # decodes are served while the job thread is busy
    assert time.perf_counter() - t < 10
    queued = post(server, pair_body(wait=False, target=12), "/api/v1/patching").json()
    assert queued["state"] == "queued"
    gone = requests.delete(f"{server.url}/api/v1/jobs/{queued['job']}", timeout=10).json()
    assert gone["state"] == "cancelled" and gone["message"] == "cancelled before it started"
    assert requests.delete(f"{server.url}/api/v1/jobs/{job.id}", timeout=10).json()["state"] in ("running", "cancelled")
    assert job.finished.wait(10) and job.state == "cancelled"
    release.set()
    # a running forward stops at the next layer: the job's hooks raise inside it
    running, forwards = threading.Event(), []

    def loop(ctx: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 30  # a broken cancel fails the test below instead of hanging the session
        while time.monotonic() < deadline:
            state.model.run([P])
            forwards.append(1)
            running.set()
        return {}
    spin, _ = state.jobs.submit("test", "spin", loop)
    assert running.wait(10)
    state.jobs.cancel(spin.id)
    assert spin.finished.wait(10) and spin.state == "cancelled"
    assert post(server, pair_body(target=12), "/api/v1/patching").json()["state"] == "done"  # re-run, not cached
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in state.model.hf_model.modules()) == 0


def test_stopping_the_server_cancels_its_running_jobs(llama_tiny: HookedModel) -> None:
    state = ServerState(llama_tiny, {})
    running = threading.Event()

    def loop(ctx: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 30  # a broken cancel fails the test below instead of hanging the session
        while time.monotonic() < deadline:
            state.model.run([P])
            running.set()
        return {}
    with ServerThread(state):
        job, _ = state.jobs.submit("test", "spin", loop)
        assert running.wait(10)
    assert job.finished.wait(10) and job.state == "cancelled"


def test_a_job_past_the_time_limit_fails_with_the_reason(llama_tiny: HookedModel) -> None:
    from dataclasses import replace

    with ServerThread(ServerState(llama_tiny, {}, limits=replace(LIMITS, max_job_seconds=0.0))) as server:
        r = post(server, pair_body(), "/api/v1/patching").json()
    assert r["state"] == "failed" and "time limit of 0 s" in r["error"]


def test_too_many_waiting_jobs_are_refused(llama_tiny: HookedModel) -> None:
    from dataclasses import replace

    state = ServerState(llama_tiny, {}, limits=replace(LIMITS, max_jobs_waiting=2))
    with ServerThread(state) as server:
        _, release, _ = blocker(state)
        assert post(server, pair_body(wait=False), "/api/v1/patching").json()["state"] == "queued"
        r = post(server, pair_body(wait=False, target=12), "/api/v1/patching")
        release.set()
    assert r.status_code == 429 and "2 heavy jobs are queued or running" in r.json()["detail"]


@pytest.mark.parametrize("path, body, status, message", [
    ("/api/v1/attention", {"prompt": P, "layer": 3}, 400, "Layer 3 is out of range"),
    ("/api/v1/attention", {"prompt": "text", "layer": 0}, 400, "no tokenizer"),
    ("/api/v1/attention", {"prompt": list(range(1, 97)) + [1] * 40, "layer": 0}, 422, "the limit is 128"),
    ("/api/v1/lens/cell", {"prompt": P, "reading": 1, "lens": "nope"}, 404, "No lens 'nope'"),
    ("/api/v1/lens/cell", {"prompt": P, "reading": 1, "position": 7}, 400, "position must be an int in -7..6"),
    ("/api/v1/attribution", {"prompt": P, "target": 500}, 400, "outside the vocabulary"),
    ("/api/v1/neurons", {"prompt": P, "layer": 0, "target": 1, "interventions": {"ablate": [[0, 9]]}}, 400,
     "No head (0, 9) to ablate"),
    ("/api/v1/neurons", {"prompt": P, "layer": 0, "target": 1, "interventions": {"ablate": [[0, 1]] * 65}}, 422,
     "at most 64"),
    ("/api/v1/attention", {"prompt": P, "layer": 0, "interventions": {"steer": {"name": "named", "scale": 1e9}}}, 422,
     "finite number"),
    ("/api/v1/attention", {"prompt": P, "layer": 0, "interventions": {"steer": {"name": "nope", "scale": 1}}}, 404,
     "No steering 'nope'"),
    ("/api/v1/attention", {"prompt": P, "layer": 0, "interventions": {"steer": {"name": "named", "layer": 5,
                                                                                 "scale": 1}}}, 400,
     "Steering layer 5 is out of range"),
    ("/api/v1/patching", {**pair_body(), "corrupt": C[:-1]}, 400, "need the same length"),
    ("/api/v1/patching", {**pair_body(), "prompt": list(range(1, 66)), "corrupt": list(range(1, 66))}, 422,
     "the limit is 64"),
    ("/api/v1/patching", {**pair_body(), "distractor": 11}, 400, "the same token"),
    ("/api/v1/graph", {**pair_body(), "ig_steps": 99}, 422, "less than or equal to 16"),
    ("/api/v1/graph", {**pair_body(), "edges": 0}, 422, "greater than or equal to 1"),
    ("/api/v1/flow", {"prompt": P, "threshold": 1.5}, 422, "less than 1"),
    ("/api/v1/flow", {"prompt": P, "position": 9}, 400, "position must be in -7..6"),
    ("/api/v1/tasks/ioi", None, 400, "tokenizer"),
])
def test_bad_requests_get_4xx_with_the_reason(served: Any, path: str, body: Any, status: int, message: str) -> None:
    server, _ = served
    r = requests.get(server.url + path, timeout=30) if body is None else post(server, body, path)
    assert r.status_code == status, r.text
    assert message in str(r.json()["detail"])
    assert len(r.content) < 4000  # the offending input is not echoed back


def test_an_unknown_job_is_404(served: Any) -> None:
    server, _ = served
    for method in (requests.get, requests.delete):
        r = method(f"{server.url}/api/v1/jobs/nope", timeout=10)
        assert r.status_code == 404 and "No job 'nope'" in r.json()["detail"]


def test_concurrent_clients_equal_sequential_answers(served: Any) -> None:
    server, state = served
    spec = {**ABLATE, "steer": {"name": "named", "layer": 2, "scale": -0.3}}
    bodies = [(PATHS[n], b) for n, b in [*views(state).items(), *views(state, spec).items()]]
    bodies.append(("/api/v1/decode", {"prompts": [P], "lens": "tuned", "interventions": spec}))
    sequential = [strip(post(server, b, path).json()) for path, b in bodies]
    failures: list[str] = []

    def client(i: int) -> None:
        for k in range(len(bodies)):
            j = (i + k) % len(bodies)
            r = post(server, bodies[j][1], bodies[j][0])
            if r.status_code != 200 or strip(r.json()) != sequential[j]:
                failures.append(f"client {i} body {j}: {r.status_code}")
    in_threads(4, client)
    assert not failures
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in state.model.hf_model.modules()) == 0


def strip(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "seconds"}


def test_schema_lists_every_view_body(served: Any) -> None:
    server, _ = served
    bodies = requests.get(server.url + "/api/v1/schema", timeout=10).json()["bodies"]
    assert {"CellRequest", "AttentionRequest", "AttributionRequest", "NeuronsRequest", "PatchingRequest",
            "GraphRequest", "FlowRequest", "JobAnswer", "TaskAnswer"} <= set(bodies)
    assert "interventions" in bodies["DecodeRequest"]["properties"]


@pytest.mark.slow
def test_ioi_pairs_and_views_on_gemma3(gemma3: HookedModel, tmp_path: Path) -> None:
    """Gemma 3 (sandwich norms, soft-capped logits, 4 heads) through every view of the API tier: the browser tier
    runs SmolLM2 only on a 2-core machine (see test_browser.py)."""
    from lmscope.lens.lenses import LogitLens
    from lmscope.probes.circuits import ioi_pairs

    state = ServerState(gemma3, {"logit": LogitLens(gemma3)})
    task = ioi_pairs(gemma3, n=2)
    with ServerThread(state) as server:
        got = requests.get(server.url + "/api/v1/tasks/ioi?n=2", timeout=60).json()
        assert got["pairs"] == task.to_dict()["pairs"]
        clean, corrupt, t, d = task.clean[0], task.corrupt[0], task.targets[0], task.distractors[0]
        for path, body in [("/api/v1/decode", {"prompts": [clean], "targets": [t]}),
                           ("/api/v1/lens/cell", {"prompt": clean, "reading": 5}),
                           ("/api/v1/attention", {"prompt": clean, "layer": 6, "scores": True}),
                           ("/api/v1/attribution", {"prompt": clean, "target": t, "contrast": d}),
                           ("/api/v1/neurons", {"prompt": clean, "layer": 6, "target": t}),
                           ("/api/v1/flow", {"prompt": clean, "wait": True}),
                           ("/api/v1/patching", {"prompt": clean, "corrupt": corrupt, "target": t, "distractor": d,
                                                 "wait": True}),
                           ("/api/v1/graph", {"prompt": clean, "corrupt": corrupt, "target": t, "distractor": d,
                                              "wait": True, "ig_steps": 2})]:
            r = post(server, {**body, "interventions": {"ablate": [[3, 1]]}} if path != "/api/v1/flow" else body, path)
            assert r.status_code == 200, (path, r.text)
            assert r.json().get("state", "done") == "done", (path, r.json().get("error"))
        a = post(server, {"prompt": clean, "target": t, "contrast": d}, "/api/v1/attribution").json()
        want = attribute(gemma3, clean, t, d, per_position=False)
        assert a["heads"] == want.heads.tolist() and a["logit"] == want.logit
