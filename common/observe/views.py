"""What the dashboard's API returns: jobs in the order people look for them, a job with its
task stream and failures, the workers with those lost. Pure functions of the client's answers."""

from __future__ import annotations

from typing import Any

from shardmill.observe import outcomes
from shardmill.observe.timeline import Timeline
from shardmill.wire.protocol import JobInfo, ShardInfo, WorkerInfo

ENDED = ("done", "failed", "cancelled")
FAILED_OUTCOMES = frozenset(("error", "crash", "timeout", "lost", "bad_input", "unknown_function"))


def job_row(job: JobInfo, now: float) -> dict[str, Any]:
    """A job as the jobs table shows it: its info, plus rate and ETA."""
    end = job.finished_at or now
    elapsed = max(1e-9, end - (job.started_at or job.submitted_at))
    rate = job.shards_done / elapsed
    left = job.shards_total - job.shards_done - job.shards_failed
    eta = left / rate if rate > 0 and job.finished_at is None else None
    return {**job.model_dump(mode="json", exclude={"shards"}), "rate": rate, "eta": eta}


def newest_first(jobs: list[JobInfo]) -> list[JobInfo]:
    """Running jobs on top, then the rest; newest first within each."""
    return sorted(jobs, key=lambda j: (j.state != "running", -j.submitted_at))


def retrying_now(shards: list[ShardInfo]) -> list[int]:
    """Shards that have not ended and have a failed attempt behind them: what `retrying N`
    counts, taken from the same stories the page lists, so the two always agree."""
    return [
        s.index
        for s in shards
        if s.state not in ENDED
        and any(a.ended is not None and a.outcome in FAILED_OUTCOMES for a in s.history)
    ]


def split_error(error: str | None) -> tuple[str, str]:
    """A job's error as (what happened, the next step): the master ends it with the latter."""
    if not error:
        return "", ""
    head, sep, step = error.rpartition("\nnext step: ")
    return (head, "next step: " + step) if sep else (error, "")


def job_detail(job: JobInfo, now: float) -> dict[str, Any]:
    """A job with its shards, their stories, and its task stream laid out in lanes."""
    timeline = Timeline.of(job, now)
    shards = job.shards or []
    error, step = split_error(job.error)
    bars = [
        {**b.__dict__, "merged": b.merged, "kind": outcomes.kind(b.outcome)} for b in timeline.bars
    ]
    return {
        **job_row(job, now),
        "shards": [s.model_dump(mode="json") for s in shards],
        "length": timeline.length,
        "lanes": [{"worker": w, "slot": s} for w, s in timeline.lanes],
        "bars": bars,
        "legend": outcomes.legend(),
        "retried": timeline.retried(),
        "retrying": retrying_now(shards),
        "lost_workers": timeline.lost_workers(),  # from the checkpointed stories: restarts too
        "efficiency": timeline.efficiency().__dict__,
        "error_text": error,
        "next_step": step,
    }


def lost_workers(jobs: list[JobInfo], alive: list[WorkerInfo]) -> list[dict[str, Any]]:
    """Workers that died holding a shard (from the jobs' stories), with the jobs they hit."""
    here = {w.worker_id for w in alive}
    hit: dict[str, list[str]] = {}
    for job in newest_first(jobs):
        for worker in job.lost_workers:
            if worker not in here:
                hit.setdefault(worker, []).append(job.job_id)
    return [{"worker_id": w, "jobs": j} for w, j in sorted(hit.items())]
