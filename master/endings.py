"""A job's end as the loop carries it out: recorded, answered, handed to its pipeline, counted
and logged, and only then archived (master/brain/archive.py): with a state dir a summary is
all that stays in memory; without one the whole job stays, within the budget."""

from __future__ import annotations

import logging
import time

from shardmill.errors import StateDirError
from shardmill.master.brain import events as ev
from shardmill.master.brain.archive import JobSummary
from shardmill.master.brain.transitions import JobState
from shardmill.master.brain.views import ending_line
from shardmill.master.clients import ClientRequests
from shardmill.master.core import Core
from shardmill.master.merge import FinalResult, MapMerger
from shardmill.master.pipelines import Pipelines
from shardmill.master.workers import Result
from shardmill.wire.codec import Buffer

log = logging.getLogger(__name__)


class Endings:
    """The loop's executors for FinalizeJob, JobEnded, Pruned and Forgotten."""

    def __init__(self, core: Core, clients: ClientRequests, pipelines: Pipelines) -> None:
        self.core = core
        self.clients = clients
        self.pipelines = pipelines

    def finalize(self, cmd: ev.FinalizeJob, result: Result | None) -> ev.Event | None:
        data = self.core.data[cmd.job_id]
        try:
            data.result = data.merger.final(cmd.missing)
        except StateDirError:
            raise
        except Exception as e:  # the op's own finalize runs here: whatever it raises
            log.warning("job %s cannot be finalized: %s", cmd.job_id, e)
            return ev.JobBroken(cmd.job_id, f"the merged result cannot be finalized: {e}")
        return self.finish(cmd.job_id)

    def ended(self, cmd: ev.JobEnded, result: Result | None) -> ev.Event:
        log.info("job %s %s: %s", cmd.job_id, cmd.state, cmd.error.splitlines()[0])
        return self.finish(cmd.job_id)

    def finish(self, job_id: str) -> ev.Event:
        """Record the job's end, answer everyone waiting for it, move its pipeline on, count
        and log it; then it is archived (the event returned)."""
        core = self.core
        data, job = core.data[job_id], core.brain.jobs[job_id]
        offset = core.brain.wall_offset
        summary = JobSummary.of(job, offset)
        core.checkpoint.job_ended(  # durable before any client hears of it
            job_id,
            job.shards,
            state=str(job.state),
            error=job.error,
            finished_at=(job.finished_at or time.monotonic()) + offset,
            result=data.result if job.state is JobState.DONE else None,
            offset=offset,
            map_job=isinstance(data.merger, MapMerger),
            summary=summary,
        )
        waiters, data.waiters = data.waiters, []
        for identity, req in waiters:
            self.clients.reply_result(job_id, identity, req)
        self.pipelines.job_ended(job_id)  # a stage reads its outcome now, before the archive
        # The rest after the answers: a waiting caller (a `call`) does not wait for it.
        core.metrics.job_ended(job)
        if log.isEnabledFor(logging.INFO):  # the line needs the job's whole info: not for nothing
            log.info("%s", ending_line(summary.info()))
        data.release_inputs()
        core.segments.release(data.segments, time.monotonic())  # may unlink what they mapped
        data.segments = []
        summarize = core.checkpoint.store is not None
        if summarize:  # its details are in the state dir: read from there when asked
            del core.data[job_id]
        return ev.JobArchived(job_id, _size(data.result), summarize)

    def forget(self, cmd: ev.Pruned, result: Result | None) -> None:
        gone = [info.job_id for info in cmd.jobs]
        self.core.checkpoint.forget(gone)
        self.pipelines.forget(gone)
        for job_id in gone:
            self.core.data.pop(job_id, None)
        if gone:
            log.info("pruned %d finished job(s)", len(gone))

    def forgotten(self, cmd: ev.Forgotten, result: Result | None) -> None:
        self.pipelines.forget(list(cmd.job_ids))
        for job_id in cmd.job_ids:
            self.core.data.pop(job_id, None)
        limits = self.core.brain.limits
        log.info(
            "forgot %d finished job(s) past the budget kept without a state dir "
            "(%d jobs, %d bytes)",
            len(cmd.job_ids),
            limits.finished_kept,
            limits.finished_bytes,
        )


def _size(result: FinalResult | None) -> int:
    """About the bytes a kept result holds."""
    if result is None:
        return 0
    arrays: list[Buffer] = list(result.arrays)
    return sum(len(p) for p in result.parts) + sum(memoryview(a).nbytes for a in arrays)
