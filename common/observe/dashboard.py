"""`shardmill dashboard`: a web page over the client API (FastAPI; `/docs` documents the JSON API).

The dashboard is a client of the master like any other: it holds one Client, asks the master
what it knows, and keeps nothing of its own, so what it shows of a job that ran before a master
restart is what the master's state dir kept. Read-only unless started with a token; then
cancelling a job takes `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.middleware.trustedhost import TrustedHostMiddleware

from shardmill.client import Client
from shardmill.errors import MasterUnreachable, ServerError, ShardmillError
from shardmill.observe.history import History, Sample, Sampler, take
from shardmill.observe.report import render_report
from shardmill.observe.timeline import Timeline
from shardmill.observe.trace import chrome_trace
from shardmill.observe.views import job_detail, job_row, lost_workers, newest_first
from shardmill.wire.protocol import JobInfo, PipelineInfo, WorkerInfo

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
RECENT = 200  # finished jobs a page lists, newest first (a week of history is 100,000)


def _page(name: str) -> str:
    return (resources.files("shardmill.observe") / "static" / name).read_text(encoding="utf-8")


class Master:
    """One Client shared by the server's threads (a Client is not thread-safe: one at a time)."""

    def __init__(self, connect: Callable[[], Client]) -> None:
        self._client = connect()
        self._lock = threading.Lock()

    @contextmanager
    def raw(self) -> Iterator[Client]:
        """The client, its errors as they are (the history sampler's)."""
        with self._lock:
            yield self._client

    def look(self) -> Sample:
        """One sample of the cluster for the charts."""
        with self.raw() as client:
            metrics, workers = client.metrics(), client.workers()
        return take(metrics, workers, time.time())

    @contextmanager
    def client(self) -> Iterator[Client]:
        """The client, its errors as HTTP ones: 503 unreachable, 404 unknown job, 502 other."""
        with self._lock:
            try:
                yield self._client
            except MasterUnreachable as e:
                raise HTTPException(503, str(e)) from e
            except ServerError as e:
                raise HTTPException(404 if e.code == "unknown_job" else 502, str(e)) from e
            except ShardmillError as e:
                raise HTTPException(502, str(e)) from e

    def close(self) -> None:
        self._client.close()


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")


def create_app(
    connect: Callable[[], Client],
    *,
    token: str | None = None,
    allowed_hosts: Sequence[str] = (),
) -> FastAPI:
    """The dashboard: `connect` makes the Client it asks the master with. Requests must name
    this machine in their Host header (or one of `allowed_hosts`): a web page elsewhere cannot
    reach it through DNS rebinding."""
    master = Master(connect)
    sampler = Sampler(master.look, History())
    app: FastAPI = FastAPIOffline(  # /docs and /redoc from packaged files: no CDN
        title="shardmill dashboard",
        description="Jobs, workers and task streams of one shardmill master (read-only "
        "unless the dashboard was started with --token).",
        on_startup=[sampler.start],
        on_shutdown=[sampler.stop, master.close],
    )
    app.state.master = master
    app.state.history = sampler.history
    static = StaticFiles(packages=[("shardmill.observe", "static")])
    app.mount("/static", static, name="static")
    app.state.token = token
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*LOOPBACK_NAMES, *allowed_hosts])
    app.include_router(pages)
    app.include_router(api)
    return app


pages = APIRouter(include_in_schema=False)
api = APIRouter()


def _master(request: Request) -> Master:
    master: Master = request.app.state.master
    return master


def _status(request: Request, job_id: str) -> JobInfo:
    with _master(request).client() as client:
        return client.status(job_id, shards=True)


@pages.get("/", response_class=HTMLResponse)
def index() -> str:
    return _page("index.html")


@pages.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str) -> str:
    return _page("job.html")


@pages.get("/cluster", response_class=HTMLResponse)
def cluster_page() -> str:
    return _page("cluster.html")


@api.get("/api/jobs", summary="Running jobs and the 200 last finished: running first, newest first")
def jobs(request: Request) -> list[dict[str, Any]]:
    with _master(request).client() as client:
        listed = client.jobs(finished=RECENT)
    now = time.time()
    return [job_row(j, now) for j in newest_first(listed)]


@api.get("/api/pipelines", summary="Every pipeline: its stages, bytes shuffled, why one waits")
def pipelines(request: Request) -> list[PipelineInfo]:
    with _master(request).client() as client:
        return client.pipelines()


@api.get("/api/workers", summary="Registered workers: slots, busy, queued, heartbeat age")
def workers(request: Request) -> list[WorkerInfo]:
    with _master(request).client() as client:
        return client.workers()


@api.get(
    "/api/cluster",
    summary="The last minutes: rates, slots, queue, each worker's beat; the standby's state",
)
def cluster(request: Request) -> dict[str, Any]:
    with _master(request).client() as client:
        alive, listed, pong = client.workers(), client.jobs(finished=RECENT), client.ping()
    history: History = request.app.state.history
    return {
        "history": history.columns(),
        "workers": [w.model_dump(mode="json") for w in alive],
        "lost": lost_workers(listed, alive),
        # "in sync: NAME", "alone: WHY", or "" for a master without one (docs/standby.md)
        "standby": pong.standby,
    }


@api.get("/api/jobs/{job_id}", summary="One job: shards, stories, task stream, efficiency")
def job(request: Request, job_id: str) -> dict[str, Any]:
    return job_detail(_status(request, job_id), time.time())


@api.get("/api/jobs/{job_id}/report", response_class=HTMLResponse, summary="HTML report")
def report(request: Request, job_id: str) -> str:
    return render_report(Timeline.of(_status(request, job_id)))


@api.get("/api/jobs/{job_id}/trace", summary="Chrome trace (Perfetto, chrome://tracing)")
def trace(request: Request, job_id: str) -> JSONResponse:
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-trace.json"'}
    return JSONResponse(chrome_trace(Timeline.of(_status(request, job_id))), headers=headers)


@api.post("/api/jobs/{job_id}/cancel", summary="Cancel a job (needs the dashboard's token)")
def cancel(request: Request, job_id: str, authorization: str = Header(default="")) -> JobInfo:
    token: str | None = request.app.state.token
    if token is None:
        raise HTTPException(403, "this dashboard is read-only: start it with --token")
    given = authorization.removeprefix("Bearer ").encode()
    if not hmac.compare_digest(given, token.encode()):
        raise HTTPException(401, "cancelling needs 'Authorization: Bearer TOKEN'")
    with _master(request).client() as client:
        return client.cancel(job_id)


@api.get("/metrics", response_class=PlainTextResponse, summary="The master's metrics")
def metrics(request: Request) -> PlainTextResponse:
    with _master(request).client() as client:
        text = client.metrics()
    return PlainTextResponse(text, media_type=PROMETHEUS_TEXT)
