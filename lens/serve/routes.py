"""The workbench endpoints of ``lmscope serve``: one ``/api/v1`` call per view, and the job endpoints.

Light views run in the request workers (bounded by ``max_concurrent``); heavy ones are submitted as jobs
(:mod:`lmscope.lens.serve.jobs`) after their request is checked, and answer the job's state at once (or, with
``"wait": true``, once it is finished). ``GET /api/v1/jobs/ID`` polls a job, ``DELETE`` cancels it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, Callable

from starlette.concurrency import run_in_threadpool

from .heavy import HEAVY
from .schema_views import (
    AttentionAnswer,
    AttentionRequest,
    AttributionAnswer,
    AttributionRequest,
    CellAnswer,
    CellRequest,
    FlowRequest,
    GraphRequest,
    JobAnswer,
    NeuronsAnswer,
    NeuronsRequest,
    PatchingRequest,
    TaskAnswer,
)
from .state import NotFound
from .views import attention_view, attribution_view, cell_view, neurons_view

if TYPE_CHECKING:
    from .jobs import Job
    from .state import ServerState


async def timed(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a request worker, its answer's ``seconds`` set to the time it took."""
    t = time.perf_counter()
    answer = await run_in_threadpool(fn, *args)
    answer.seconds = time.perf_counter() - t
    return answer


async def submit(state: ServerState, kind: str, req: Any) -> JobAnswer:
    """Check ``req``, submit (or find) its job; wait for it when the request asks to."""
    _, make = HEAVY[kind]
    key = json.dumps([kind, req.model_dump(exclude={"wait"})], sort_keys=True)
    work = await run_in_threadpool(make, state, req)  # a bad request is a 400 here, before any job
    job, cached = state.jobs.submit(kind, key, work)
    if req.wait:
        deadline = time.monotonic() + state.limits.max_job_seconds + 10
        while not job.finished.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    return JobAnswer(**job.view(cached))


def found(job: Job | None, job_id: str) -> Job:
    if job is None:
        raise NotFound(f"No job {job_id!r} on this server (finished jobs are kept for a while, then forgotten).")
    return job


#: path -> (request body, answer body, the view computing it) of the light views
LIGHT: dict[str, tuple[type, type, Callable[..., Any]]] = {
    "/api/v1/lens/cell": (CellRequest, CellAnswer, cell_view),
    "/api/v1/attention": (AttentionRequest, AttentionAnswer, attention_view),
    "/api/v1/attribution": (AttributionRequest, AttributionAnswer, attribution_view),
    "/api/v1/neurons": (NeuronsRequest, NeuronsAnswer, neurons_view),
}
#: path -> (request body, job kind) of the heavy views
HEAVY_PATHS: dict[str, tuple[type, str]] = {
    "/api/v1/patching": (PatchingRequest, "patching"), "/api/v1/graph": (GraphRequest, "graph"),
    "/api/v1/flow": (FlowRequest, "flow")}


def _light(state: ServerState, body: type, answer: type, view: Callable[..., Any]) -> Callable[..., Any]:
    async def endpoint(req: Any) -> Any:
        return await timed(view, state, req)
    endpoint.__annotations__ = {"req": body, "return": answer}  # what FastAPI validates and documents
    return endpoint


def _heavy(state: ServerState, body: type, kind: str) -> Callable[..., Any]:
    async def endpoint(req: Any) -> JobAnswer:
        return await submit(state, kind, req)
    endpoint.__annotations__ = {"req": body, "return": JobAnswer}
    return endpoint


def add_routes(app: Any, state: ServerState) -> None:
    """Register the workbench endpoints on ``app``."""
    for path, (body, answer, view) in LIGHT.items():
        app.post(path)(_light(state, body, answer, view))
    for path, (body, kind) in HEAVY_PATHS.items():
        app.post(path)(_heavy(state, body, kind))

    @app.get("/api/v1/jobs/{job_id}")
    def job(job_id: str) -> JobAnswer:
        return JobAnswer(**found(state.jobs.get(job_id), job_id).view())

    @app.delete("/api/v1/jobs/{job_id}")
    def cancel(job_id: str) -> JobAnswer:
        return JobAnswer(**found(state.jobs.cancel(job_id), job_id).view())

    @app.get("/api/v1/tasks/ioi")
    def ioi(n: int = 8, seed: int = 0) -> TaskAnswer:
        from lmscope.probes.circuits import ioi_pairs

        task = ioi_pairs(state.model, n=max(1, min(n, 64)), seed=seed)
        return TaskAnswer(**task.to_dict())
