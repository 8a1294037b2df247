"""Which jobs come in and which are forgotten: the quota, the shard limit, id clashes, pruning."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shardmill.master.brain.events import SubmitRequested
from shardmill.master.brain.model import Job, Limits


def refusal(
    e: SubmitRequested, jobs: Mapping[str, Job], active: Iterable[Job], limits: Limits
) -> str | None:
    """Why the job may not come in, naming the limit and the fix; None admits it."""
    queued = sum(1 for j in active if not j.finished and j.owner == e.owner)
    if queued >= limits.max_queued_jobs:
        return (
            f"this client already has {queued} unfinished jobs, the limit "
            "(max_queued_jobs); wait for some to finish or cancel them"
        )
    if e.shards > limits.max_shards:
        return (
            f"shards: the job would have {e.shards:,} shards, "
            f"above max_shards={limits.max_shards:,}; use bigger shards"
        )
    if e.job_id in jobs:
        return f"job_id: a job {e.job_id!r} exists already; pick another id"
    return None


def prunable(jobs: Iterable[Job], cutoff: float, *, keep: frozenset[str]) -> list[Job]:
    """Finished jobs that ended at or before `cutoff`, except those in `keep`."""
    return [
        job
        for job in jobs
        if job.finished
        and job.finished_at is not None
        and job.finished_at <= cutoff
        and job.job_id not in keep
    ]
