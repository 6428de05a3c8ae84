"""The FastAPI application of ``lmscope serve``: security middleware, JSON API, the static explorer page.

Status codes: 400 an lmscope error (bad token, layer, position...), 401 missing/wrong token, 404 an unknown
lens, steering name or job, 409 a ``lmscope decode`` request for another model or lens (the client then decodes
locally), 413 a body over the size limit, 421 a ``Host`` header that is not this server (DNS rebinding),
422 a body that does not match the schema, 429 too many heavy jobs waiting. No endpoint evaluates user code or
writes files. The workbench views' endpoints are in ``routes.py``.
"""

from __future__ import annotations

import hmac
import json
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from lmscope.interventions.errors import LmscopeError

from .jobs import Busy
from .routes import add_routes
from .schema import (
    SCHEMA_VERSION,
    CliDecodeAnswer,
    CliDecodeRequest,
    DecodeAnswer,
    DecodeRequest,
)
from .schema_views import schemas
from .state import Mismatch, NotFound, ServerState

ASGIApp = Callable[..., Awaitable[None]]
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class Guard:
    """ASGI middleware: body-size limit, ``Host`` check, and the bearer token on ``/api/``."""

    def __init__(self, app: ASGIApp, *, max_body: int, token: str | None, hosts: set[str]) -> None:
        self.app, self.max_body, self.token, self.hosts = app, max_body, token, hosts

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.hosts and headers.get("host", "").lower() not in self.hosts:
            await _reply(send, 421, "This server only answers requests addressed to it by its own host name.")
            return
        if self.token is not None and scope["path"].startswith("/api/"):
            given = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                await _reply(send, 401, "Missing or wrong token: send 'Authorization: Bearer <token>'.")
                return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _reply(send, 413, f"Request body over the limit of {self.max_body} bytes.")
            return
        # read the whole (bounded) body first, then hand it to the app: chunked bodies are limited too
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await _reply(send, 413, f"Request body over the limit of {self.max_body} bytes.")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        await self.app(scope, replay, send)


async def _reply(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail, "schema_version": SCHEMA_VERSION}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def static_dir() -> Path:
    return Path(str(resources.files("lmscope.lens.serve") / "static"))


def add_error_handlers(app: Any) -> None:
    """lmscope errors as 400/404/409/429 with the message; schema errors as 422 without the offending input."""
    @app.exception_handler(LmscopeError)
    async def lmscope_error(request: Request, err: LmscopeError) -> JSONResponse:
        status = 404 if isinstance(err, NotFound) else 409 if isinstance(err, Mismatch) else \
            429 if isinstance(err, Busy) else 400
        msg = err.args[0] if err.args else str(err)
        return JSONResponse({"detail": str(msg), "error": type(err).__name__, "schema_version": SCHEMA_VERSION},
                            status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # the errors without the offending input (it can be a 64 KiB prompt)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in err.errors()]
        return JSONResponse({"detail": errors, "error": "ValidationError", "schema_version": SCHEMA_VERSION},
                            status_code=422)


def create_app(state: ServerState, *, token: str | None = None, port: int | None = None,
               host: str = "127.0.0.1") -> Any:
    """The ASGI application serving ``state``. ``token`` protects ``/api/``; ``Host`` must name this server."""
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        state.jobs.cancel_all()  # a running job stops at its next layer instead of holding the process open

    app = FastAPI(title="lmscope serve", version=str(SCHEMA_VERSION), docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.state.lmscope = state
    add_error_handlers(app)

    @app.get("/api/v1/info")
    def info() -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **state.info()}

    @app.get("/api/v1/schema")
    def schema() -> dict[str, Any]:
        return schemas()

    @app.post("/api/v1/decode")
    async def decode(req: DecodeRequest) -> DecodeAnswer:
        t = time.perf_counter()
        trajs, active = await run_in_threadpool(state.decode, req)
        return DecodeAnswer(lens=state.lens(req.lens, req.mid).describe(), steer=req.steer,
                            trajectories=[tr.to_dict() for tr in trajs], seconds=time.perf_counter() - t,
                            active=active)

    @app.post("/api/v1/cli/decode")
    async def cli_decode(req: CliDecodeRequest) -> CliDecodeAnswer:
        t = time.perf_counter()
        text = await run_in_threadpool(cli_text, state, req)
        return CliDecodeAnswer(text=text, seconds=time.perf_counter() - t)

    add_routes(app, state)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(static_dir() / "index.html")

    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    hosts: set[str] = set()
    if host in LOCAL_HOSTS and port is not None:
        hosts = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")}
    limits = state.limits
    return Guard(app, max_body=limits.max_body_bytes, token=token, hosts=hosts)


def cli_text(state: ServerState, req: CliDecodeRequest) -> str:
    """What ``lmscope decode`` would print for ``req`` (a table or JSON), or Mismatch."""
    from lmscope.interventions.specs import parse_layers

    if (req.model, req.dtype, req.device) != (state.model_spec, state.dtype, state.device):
        raise Mismatch(f"This server serves --model {state.model_spec} ({state.dtype}, {state.device}).")
    lens = state.lens(state.cli_lens_name(req.lens), req.mid)
    layers = parse_layers(req.layers)
    with state._gate:
        traj = lens.decode(req.prompt, top_k=req.top_k, targets=req.target, positions=req.positions, layers=layers)
    return traj.to_json() if req.json_output else traj.table()
