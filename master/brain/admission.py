"""Which jobs come in and which are forgotten: the quota, the shard limit, id clashes, pruning,
and a finished job's archiving (its summary, or whole within the budget: see archive.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from shardmill.master.brain.archive import Archive, JobSummary
from shardmill.master.brain.events import JobArchived, SubmitRequested
from shardmill.master.brain.model import Job, Limits
from shardmill.wire.protocol import JobInfo


def refusal(
    e: SubmitRequested, known: Callable[[str], bool], active: Iterable[Job], limits: Limits
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
    if known(e.job_id):
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


def prune(
    jobs: dict[str, Job], archive: Archive, cutoff: float, *, offset: float, keep: frozenset[str]
) -> list[JobInfo]:
    """Forget finished jobs, whole or archived, that ended at or before `cutoff` (the brain's
    clock; `offset` turns it into wall-clock time), except those in `keep`; what they were."""
    gone = prunable(jobs.values(), cutoff, keep=keep)
    for job in gone:
        del jobs[job.job_id]
    infos = [job.info(offset=offset) for job in gone]
    old = [s for s in archive if s.finished_at <= cutoff + offset and s.job_id not in keep]
    for summary in old:
        archive.drop(summary.job_id)
    return infos + [s.info() for s in old]


def archive_job(
    jobs: dict[str, Job], archive: Archive, e: JobArchived, limits: Limits, *, offset: float
) -> tuple[str, ...]:
    """A finished, answered job shrinks to its summary, or is kept whole within the budget;
    the whole jobs forgotten past it (oldest first)."""
    job = jobs.get(e.job_id)
    if job is None or not job.finished:
        return ()
    if e.summarize:
        del jobs[e.job_id]
        archive.add(JobSummary.of(job, offset))
        return ()
    over = archive.keep(e.job_id, e.size, count=limits.finished_kept, total=limits.finished_bytes)
    gone = tuple(j for j in over if jobs.pop(j, None) is not None)
    archive.forgotten += len(gone)
    return gone
