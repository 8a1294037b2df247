"""The brain's job lifecycle without sockets: admission, the job transition table, pruning, and
restoring checkpointed jobs after a restart (with the hold that lets workers come back)."""

from __future__ import annotations

import pytest

from shardmill.errors import InvalidTransition
from shardmill.master.brain import events as ev
from shardmill.master.brain.model import Limits, Timing
from shardmill.master.brain.state import MasterState
from shardmill.master.brain.transitions import JobState, ShardState
from shardmill.wire.protocol import AttemptInfo, Lease
from shardmill.wire.spec import JobSpec

SPEC = JobSpec(op="map", function="m:f", max_attempts=3)
WALL = 1_000.0  # wall clock at the brain's zero


def _brain(**limits: int) -> MasterState:
    timing = Timing(heartbeat_interval=1.0, heartbeat_liveness=3)
    return MasterState(timing, limits=Limits(**limits), wall_offset=WALL)


def _finish(s: MasterState, job_id: str, *, now: float) -> None:
    """Run every shard of a one-worker job to success."""
    for shard in range(len(s.jobs[job_id].shards)):
        s.handle(ev.ShardSucceeded("w1", job_id, shard, 1), now=now)


def test_admission_refuses_over_quota_too_many_shards_and_a_taken_id() -> None:
    # Given a brain that allows one unfinished job per client and 10 shards a job
    s = _brain(max_queued_jobs=1, max_shards=10)
    ok = s.handle(ev.SubmitRequested("a", 4, owner="alice"), now=0)
    assert ok == [ev.Admitted("a")]
    s.handle(ev.JobAdded("a", SPEC, 4, owner="alice"), now=0)
    # When alice asks again, bob asks for 11 shards, and bob reuses alice's id
    quota = s.handle(ev.SubmitRequested("b", 1, owner="alice"), now=0)
    big = s.handle(ev.SubmitRequested("c", 11, owner="bob"), now=0)
    clash = s.handle(ev.SubmitRequested("a", 1, owner="bob"), now=0)
    # Then each is refused with the limit or clash named, and nothing was recorded
    assert isinstance(quota[0], ev.Refused) and "max_queued_jobs" in quota[0].reason
    assert isinstance(big[0], ev.Refused) and "max_shards=10" in big[0].reason
    assert isinstance(clash[0], ev.Refused) and "exists already" in clash[0].reason
    assert list(s.jobs) == ["a"]
    # And once alice's job ends, her next one is admitted
    s.handle(ev.CancelRequested("a"), now=1)
    assert s.handle(ev.SubmitRequested("b", 1, owner="alice"), now=2) == [ev.Admitted("b")]


def test_a_job_moves_only_through_its_table_and_keeps_the_causes() -> None:
    # Given a job that finished with every shard merged
    s = _brain()
    s.handle(ev.WorkerReady("w1", slots=4), now=0)
    s.handle(ev.JobAdded("j", SPEC, 2), now=0)
    _finish(s, "j", now=1)
    job = s.jobs["j"]
    assert job.state is JobState.DONE and job.finished_at == 1
    # When its result cannot be finalized / Then done -> failed is allowed, with the cause
    s.handle(ev.JobBroken("j", "the merged result cannot be finalized: boom"), now=2)
    assert job.state is JobState.FAILED
    assert list(job.story) == [
        "submitted",
        "running->done: every shard settled",
        "done->failed: the merged result cannot be finalized: boom",
    ]
    # And a failed job cannot become done: the table refuses, naming the job and its story
    with pytest.raises(InvalidTransition, match=r"job j: failed -> done .*recent story"):
        job.transition(JobState.DONE, "a bug", now=3)


def test_prune_forgets_old_finished_jobs_but_not_running_or_waited_ones() -> None:
    # Given three finished jobs (one ended late, one a client waits for) and a running one
    s = _brain()
    s.handle(ev.WorkerReady("w1", slots=8), now=0)
    for job_id, ends in (("old", 1.0), ("waited", 1.0), ("recent", 9.0)):
        s.handle(ev.JobAdded(job_id, SPEC, 1), now=0)
        _finish(s, job_id, now=ends)
    s.handle(ev.JobAdded("running", SPEC, 20), now=0)
    # When jobs that ended at least 5 s ago are pruned at t=10
    cmds = s.handle(ev.PruneRequested(5.0, keep=frozenset({"waited"})), now=10)
    # Then only the old one goes, and the command carries what users saw of it
    [pruned] = cmds
    assert isinstance(pruned, ev.Pruned) and [info.job_id for info in pruned.jobs] == ["old"]
    assert pruned.jobs[0].finished_at == WALL + 1.0
    assert sorted(s.jobs) == ["recent", "running", "waited"]


def test_restored_jobs_keep_settled_shards_and_hold_dispatch_until_workers_return() -> None:
    # Given a running job whose shard 0 was merged before the restart, and a cancelled job
    s = _brain()
    story = AttemptInfo(attempt=1, worker="w0", started=WALL + 1, ended=WALL + 2, outcome="ok")
    done = {0: (ShardState.DONE, (story,))}
    s.handle(ev.JobRestored("j", SPEC, 3, WALL, JobState.RUNNING, done), now=0)
    s.handle(ev.JobRestored("c", SPEC, 2, WALL, JobState.CANCELLED, {}, "x", WALL + 5), now=0)
    # When the restore ends / Then the queue is held for one expiry, and says so
    assert s.handle(ev.RestoreDone(), now=0) == [ev.Holding(3.0, unfinished=1, jobs=2)]
    job = s.jobs["j"]
    assert job.counts[ShardState.DONE] == 1 and list(job.ready) == [1, 2]
    assert job.shards[0].history[0].started == 1.0  # back on the master's clock
    assert {sh.state for sh in s.jobs["c"].shards} == {ShardState.CANCELLED}
    # And a worker coming back with shard 1 keeps it; nothing is sent before the hold ends
    held = (Lease(job_id="j", shard=1, attempt=1),)
    cmds = s.handle(ev.WorkerReady("w1", slots=2, held=held), now=1)
    assert cmds == [] and job.shards[1].state is ShardState.LEASED
    # When the hold is over / Then the one shard nobody holds goes out
    sends = [c for c in s.handle(ev.Tick(), now=3.0) if isinstance(c, ev.SendTask)]
    assert [(c.worker, c.shard) for c in sends] == [("w1", 2)]


def test_nothing_is_held_after_a_restart_with_no_unfinished_job() -> None:
    s = _brain()
    s.handle(ev.JobRestored("c", SPEC, 2, WALL, JobState.DONE, {}), now=0)
    assert s.handle(ev.RestoreDone(), now=0) == [] and s.next_deadline() is None
