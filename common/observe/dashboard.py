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
from starlette.middleware.trustedhost import TrustedHostMiddleware

from shardmill.client import Client
from shardmill.errors import MasterUnreachable, ServerError, ShardmillError
from shardmill.observe.report import render_report
from shardmill.observe.timeline import Timeline
from shardmill.observe.trace import chrome_trace
from shardmill.wire.protocol import JobInfo, PipelineInfo, WorkerInfo

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _page(name: str) -> str:
    return (resources.files("shardmill.observe") / "static" / name).read_text(encoding="utf-8")


class Master:
    """One Client shared by the server's threads (a Client is not thread-safe: one at a time)."""

    def __init__(self, connect: Callable[[], Client]) -> None:
        self._client = connect()
        self._lock = threading.Lock()

    @contextmanager
    def client(self) -> Iterator[Client]:
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


def job_row(job: JobInfo, now: float) -> dict[str, Any]:
    """A job as the jobs table shows it: its info, plus rate and ETA."""
    end = job.finished_at or now
    elapsed = max(1e-9, end - (job.started_at or job.submitted_at))
    rate = job.shards_done / elapsed
    left = job.shards_total - job.shards_done - job.shards_failed
    eta = left / rate if rate > 0 and job.finished_at is None else None
    return {**job.model_dump(mode="json", exclude={"shards"}), "rate": rate, "eta": eta}


def job_detail(job: JobInfo, now: float) -> dict[str, Any]:
    """A job with its shards, their stories, and its task stream laid out in lanes."""
    timeline = Timeline.of(job, now)
    shards = job.shards or []
    return {
        **job_row(job, now),
        "shards": [s.model_dump(mode="json") for s in shards],
        "length": timeline.length,
        "lanes": [{"worker": w, "slot": s} for w, s in timeline.lanes],
        "bars": [{**b.__dict__, "merged": b.merged} for b in timeline.bars],
        "retried": timeline.retried(),
        "lost_workers": timeline.lost_workers(),  # from the checkpointed stories: restarts too
        "efficiency": timeline.efficiency().__dict__,
    }


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
    app = FastAPI(
        title="shardmill dashboard",
        description="Jobs, workers and task streams of one shardmill master (read-only "
        "unless the dashboard was started with --token).",
        on_shutdown=[master.close],
    )
    app.state.master = master
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


@api.get("/api/jobs", summary="Every job the master knows, with rate and ETA")
def jobs(request: Request) -> list[dict[str, Any]]:
    with _master(request).client() as client:
        listed = client.jobs()
    now = time.time()
    return [job_row(j, now) for j in listed]


@api.get("/api/pipelines", summary="Every pipeline: its stages, bytes shuffled, why one waits")
def pipelines(request: Request) -> list[PipelineInfo]:
    with _master(request).client() as client:
        return client.pipelines()


@api.get("/api/workers", summary="Registered workers: slots, busy, queued, heartbeat age")
def workers(request: Request) -> list[WorkerInfo]:
    with _master(request).client() as client:
        return client.workers()


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
