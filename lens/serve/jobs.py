"""Heavy requests (patching maps, circuit graphs, flow routes) as jobs: own worker threads, progress, a time
limit, cancellation, and an answer cache keyed by the request.

Jobs run on ``heavy_workers`` threads of their own, so a lens decode (served by the request workers) never waits
behind a sweep. At most ``max_jobs_waiting`` jobs are queued or running; one more is refused (HTTP 429). A job
reports progress through its :class:`JobContext` (``step(done, total)``); while it runs, a pre-hook on every decoder
layer, acting only in the job's own thread (``local_hooks``), stops it at the next layer once it is cancelled
(``DELETE /api/v1/jobs/ID``) or past ``max_job_seconds``. The same request (same body, ``wait`` aside) returns the
same job: a finished one is the cached answer (the last ``max_jobs_kept`` are kept); a failed or cancelled one is
replaced by a new run.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from lmscope.interventions.errors import LmscopeError
from lmscope.interventions.local import local_hooks

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel

    from .schema import Limits

DONE_STATES = ("done", "failed", "cancelled")


class Stopped(Exception):
    """Raised inside a job's forward when it is cancelled or past its time limit."""


class Busy(LmscopeError):
    """Too many heavy jobs waiting (HTTP 429)."""


@dataclass
class Job:
    """One heavy computation: ``state`` is queued, running, done, failed or cancelled; ``progress`` in [0, 1]."""

    id: str
    kind: str
    key: str
    state: str = "queued"
    progress: float = 0.0
    message: str = "queued"
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def view(self, cached: bool = False) -> dict[str, Any]:
        return {"job": self.id, "kind": self.kind, "state": self.state, "progress": self.progress,
                "message": self.message, "cached": cached, "seconds": self.seconds, "result": self.result,
                "error": self.error}


class JobContext:
    """What a job's function gets: ``step`` reports progress and stops a cancelled or late job."""

    def __init__(self, job: Job, deadline: float, limit: float) -> None:
        self.job, self.deadline, self.limit = job, deadline, limit

    def check(self) -> None:
        if self.job.cancel.is_set():
            raise Stopped("cancelled")
        if time.monotonic() > self.deadline:
            raise Stopped(f"stopped at the time limit of {self.limit:g} s (max_job_seconds)")

    def step(self, done: int, total: int, message: str) -> None:
        self.check()
        self.job.progress = done / max(1, total)
        self.job.message = message


class JobManager:
    """Runs jobs on their own threads (see the module docstring)."""

    def __init__(self, model: HookedModel, limits: Limits) -> None:
        self.model, self.limits = model, limits
        self._pool = ThreadPoolExecutor(max_workers=limits.heavy_workers, thread_name_prefix="lmscope-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # by id, oldest first
        self._by_key: dict[str, str] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def submit(self, kind: str, key: str, fn: Callable[[JobContext], dict[str, Any]]) -> tuple[Job, bool]:
        """The job for ``key`` (``(job, True)`` when it already existed and did not fail) or a new one."""
        with self._lock:
            old = self._jobs.get(self._by_key.get(key, ""))
            if old is not None and old.state not in ("failed", "cancelled"):
                self._jobs.move_to_end(old.id)
                return old, True
            waiting = sum(j.state in ("queued", "running") for j in self._jobs.values())
            if waiting >= self.limits.max_jobs_waiting:
                raise Busy(f"{waiting} heavy jobs are queued or running (the limit is {self.limits.max_jobs_waiting});"
                           " wait for one to finish or cancel one.")
            job = Job(f"{next(self._ids)}-{uuid.uuid4().hex[:8]}", kind, key)
            self._jobs[job.id], self._by_key[key] = job, job.id
            self._evict()
        self._pool.submit(self._run, job, fn)
        return job, False

    def _evict(self) -> None:
        done = [j for j in self._jobs.values() if j.state in DONE_STATES]
        for j in done[: max(0, len(done) - self.limits.max_jobs_kept)]:
            del self._jobs[j.id]
            if self._by_key.get(j.key) == j.id:
                del self._by_key[j.key]

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is not None and job.state not in DONE_STATES:
            job.cancel.set()
            if job.state == "queued":
                self._finish(job, "cancelled", "cancelled before it started")
        return job

    def _finish(self, job: Job, state: str, message: str, error: str | None = None) -> None:
        with self._lock:
            if job.state in DONE_STATES:
                return
            job.state, job.message, job.error = state, message, error
            if state == "done":
                job.progress = 1.0
            self._evict()
        job.finished.set()

    def _run(self, job: Job, fn: Callable[[JobContext], dict[str, Any]]) -> None:
        if job.cancel.is_set():
            self._finish(job, "cancelled", "cancelled before it started")
            return
        start = time.monotonic()
        ctx = JobContext(job, start + self.limits.max_job_seconds, self.limits.max_job_seconds)
        job.state, job.message = "running", "starting"
        guard = [(self.model.layer_module(i), lambda *args: ctx.check()) for i in range(self.model.n_layers)]
        try:
            with local_hooks(guard, pre=True):
                result = fn(ctx)
        except Stopped as stop:
            state = "cancelled" if str(stop) == "cancelled" else "failed"
            self._finish(job, state, str(stop), None if state == "cancelled" else str(stop))
        except LmscopeError as err:
            self._finish(job, "failed", "failed", str(err.args[0] if err.args else err))
        except Exception as err:  # reported in the job, not lost in a worker thread
            self._finish(job, "failed", "failed", f"{type(err).__name__}: {err}")
        else:
            job.result = result
            job.seconds = time.monotonic() - start
            self._finish(job, "done", "done")
        finally:
            job.seconds = time.monotonic() - start

    def cancel_all(self) -> None:
        """Cancel every queued or running job (the server is stopping: none may hold the process open)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self.cancel(job.id)
