"""Jobs rebuilt from the state dir after a restart, on the master's clock."""

from __future__ import annotations

from shardmill.master.brain.attempt import Attempt
from shardmill.master.brain.events import JobRestored
from shardmill.master.brain.model import Job, Shard
from shardmill.master.brain.transitions import JobState, ShardState
from shardmill.wire.protocol import AttemptInfo


def restored_job(e: JobRestored, wall_offset: float) -> Job:
    """Settled shards stay settled, the rest wait in the queue (or stay cancelled).

    Creation, not a transition: a restored job and its shards start in their saved state.
    """
    job = Job(
        e.job_id,
        e.spec,
        [],
        submitted_at=e.submitted_at - wall_offset,
        state=e.state,
        error=e.error,
        finished_at=None if e.finished_at is None else e.finished_at - wall_offset,
        owner=e.spec.owner,
        started_at=None if e.started_at is None else e.started_at - wall_offset,
        restarts=list(e.restarts),
        attempts_given=e.attempts_given,
        attempts_before=e.attempts_given,
        resent=e.resent,
    )
    job.story.append(f"restored as {e.state}")
    unsettled = ShardState.QUEUED if e.state is JobState.RUNNING else ShardState.CANCELLED
    for i in range(e.shards):
        st, history = e.settled.get(i, (unsettled, ()))
        shard = Shard(job_id=e.job_id, index=i, state=st, merged=int(st is ShardState.DONE))
        shard.history = [_attempt(a, wall_offset) for a in history]
        shard.story.append(f"restored as {st}")
        job.shards.append(shard)
        job.counts[st] += 1
        if st is ShardState.QUEUED:
            job.ready.append(i)
        for a in shard.history:  # what straggler backups measure against: merged shards' runs
            if a.outcome == "ok" and a.ran is not None:
                job.record_run(a.worker, a.ran)
            job.duplicates += a.outcome == "duplicate"
    return job


def _attempt(a: AttemptInfo, wall_offset: float) -> Attempt:
    ended = None if a.ended is None else a.ended - wall_offset
    started = a.started - wall_offset
    return Attempt(
        a.attempt,
        a.worker,
        started,
        ended,
        a.outcome,
        a.error,
        ran=a.ran,
        backup=a.backup,
        output=a.output,
    )
