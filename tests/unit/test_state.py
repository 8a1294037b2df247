"""The master's pure state machine: events in, commands out, time injected."""

from __future__ import annotations

import pytest

from shardmill.errors import InvalidTransition, RemoteError
from shardmill.job import unpack_result
from shardmill.master.brain import events as ev
from shardmill.master.brain.failures import telling_error
from shardmill.master.brain.model import Timing
from shardmill.master.brain.speculation import SlowHosts, plan_backups, wait_before_backup
from shardmill.master.brain.state import MasterState
from shardmill.master.brain.transitions import JobState, ShardState
from shardmill.master.brain.views import worker_infos
from shardmill.wire.protocol import AttemptInfo, ErrorInfo, JobResult, Lease
from shardmill.wire.spec import JobSpec

SPEC = JobSpec(op="map", function="m:f", max_attempts=3)


def _state() -> MasterState:
    return MasterState(
        Timing(
            heartbeat_interval=1.0, heartbeat_liveness=3, retry_backoff=0.1, retry_backoff_max=1.0
        )
    )


def _sends(cmds: list[ev.Command]) -> list[ev.SendTask]:
    return [c for c in cmds if isinstance(c, ev.SendTask)]


def _error(kind: str = "error", retryable: bool = True) -> ErrorInfo:
    return ErrorInfo(kind=kind, type="ValueError", message="bad", retryable=retryable)


def test_dispatch_never_exceeds_worker_credits() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=2), now=0)
    s.handle(ev.WorkerReady("w2", slots=1), now=0)
    # When a 10-shard job arrives / Then exactly 3 shards go out, 2 to w1 and 1 to w2
    sends = _sends(s.handle(ev.JobAdded("j", SPEC, 10), now=1))
    assert sorted(c.worker for c in sends) == ["w1", "w1", "w2"]
    assert [c.shard for c in sends] == [0, 1, 2]
    # When one result arrives / Then one merge and exactly one new shard, to the freed worker
    w2_shard = next(c.shard for c in sends if c.worker == "w2")
    cmds = s.handle(ev.ShardSucceeded("w2", "j", w2_shard, 1), now=2)
    assert [type(c) for c in cmds] == [ev.MergeShard, ev.SendTask]
    assert _sends(cmds)[0].worker == "w2"


def test_result_is_merged_once_and_duplicates_are_counted() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.JobAdded("j", SPEC, 1), now=0)
    first = s.handle(ev.ShardSucceeded("w1", "j", 0, 1), now=1)
    assert ev.MergeShard("j", 0) in first and ev.FinalizeJob("j") in first
    # When the same execution's result comes again (a worker resends after a reconnect)
    again = s.handle(ev.ShardSucceeded("w1", "j", 0, 1), now=2)
    # Then it is a resent copy, not a second execution, and no story changes
    assert again == [ev.DropDuplicate("j", 0, "w1", resent=True)]
    assert (s.job_info("j").resent, s.job_info("j").duplicates) == (1, 0)
    # When a second execution's result comes (another worker ran it too), twice
    other = s.handle(ev.ShardSucceeded("w2", "j", 0, 2, duration=0.5), now=3)
    copy = s.handle(ev.ShardSucceeded("w2", "j", 0, 2, duration=0.5), now=4)
    # Then it is a counted duplicate, that execution is in the shard's story (to be written),
    # and its copy is a resent one
    assert other == [ev.AskReregister("w2"), ev.DropDuplicate("j", 0, "w2", stories=(0,))]
    assert copy == [ev.AskReregister("w2"), ev.DropDuplicate("j", 0, "w2", resent=True)]
    info = s.job_info("j", shards=True)
    assert (info.resent, info.duplicates) == (2, 1) and s.jobs["j"].shards[0].merged == 1
    assert info.shards is not None
    assert [(a.attempt, a.worker, a.outcome) for a in info.shards[0].history] == [
        (1, "w1", "ok"), (2, "w2", "duplicate"),
    ]  # fmt: skip
    assert info.shards[0].history[1].ran == 0.5


def test_failure_retries_after_backoff_then_quarantines_with_the_story() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.JobAdded("j", SPEC, 1), now=0)
    now = 0.0
    for attempt in (1, 2):
        cmds = s.handle(ev.ShardFailed("w1", "j", 0, attempt, _error()), now=now)
        assert _sends(cmds) == []  # backing off: nothing is re-sent at once
        assert s.jobs["j"].shards[0].state is ShardState.WAITING
        deadline = s.next_deadline()
        assert deadline is not None and now < deadline <= now + 1.0
        now = deadline
        assert [c.attempt for c in _sends(s.handle(ev.Tick(), now=now))] == [attempt + 1]
    cmds = s.handle(ev.ShardFailed("w1", "j", 0, 3, _error()), now=now)
    ended = [c for c in cmds if isinstance(c, ev.JobEnded)]
    assert ended and ended[0].state == "failed"
    assert "shard 0 of 1 failed after 3 attempt(s)" in ended[0].error
    assert ended[0].error.count("on worker w1") == 3 and "next step" in ended[0].error


def test_non_retryable_error_fails_the_job_at_once() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.JobAdded("j", SPEC, 3), now=0)
    missing = ErrorInfo(
        kind="unknown_function", message="module 'm' is not imported", retryable=False
    )
    cmds = s.handle(ev.ShardFailed("w1", "j", 0, 1, missing), now=1)
    assert any(isinstance(c, ev.JobEnded) for c in cmds)
    assert "--import" in s.jobs["j"].error  # type: ignore[operator]
    # A module the workers have, without the function: no advice to import it again
    s.handle(ev.JobAdded("k", SPEC, 3), now=2)
    s.handle(ev.ShardFailed("w1", "k", 0, 1, _error("unknown_function", False)), now=3)
    error = s.jobs["k"].error or ""
    assert "--import" not in error and "a function the module offers" in error


def test_allow_failures_covers_bad_input_but_not_unknown_functions() -> None:
    s = _state()
    spec = SPEC.model_copy(update={"allow_failures": 1})
    s.handle(ev.WorkerReady("w1", slots=2), now=0)
    s.handle(ev.JobAdded("j", spec, 2), now=0)
    s.handle(ev.ShardFailed("w1", "j", 0, 1, _error("bad_input", False)), now=1)
    assert s.job_info("j").state == "running"  # one bad shard is allowed
    assert ev.FinalizeJob("j", missing=(0,)) in s.handle(ev.ShardSucceeded("w1", "j", 1, 1), 2)
    s.handle(ev.JobAdded("k", spec, 2), now=3)
    s.handle(ev.ShardFailed("w1", "k", 0, 1, _error("unknown_function", False)), now=4)
    assert s.job_info("k").state == "failed"


def test_allow_failures_completes_and_lists_missing_shards() -> None:
    s = _state()
    spec = SPEC.model_copy(update={"max_attempts": 1, "allow_failures": 1})
    s.handle(ev.WorkerReady("w1", slots=2), now=0)
    s.handle(ev.JobAdded("j", spec, 2), now=0)
    s.handle(ev.ShardFailed("w1", "j", 0, 1, _error()), now=1)
    cmds = s.handle(ev.ShardSucceeded("w1", "j", 1, 1), now=2)
    assert ev.FinalizeJob("j", missing=(0,)) in cmds


def test_expired_worker_requeues_its_shards_charged_and_elsewhere() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.JobAdded("j", SPEC, 1), now=0)
    s.handle(ev.WorkerReady("w2", slots=1), now=0.5)
    s.handle(ev.WorkerSeen("w2"), now=2.9)
    # When w1 stays silent past 3 x 1 s / Then it expires and w2 gets the shard at once
    cmds = s.handle(ev.Tick(), now=3.0)
    assert ev.WorkerExpired("w1", 1, 3.0) in cmds
    assert [(c.worker, c.attempt) for c in _sends(cmds)] == [("w2", 2)]
    shard = s.jobs["j"].shards[0]
    assert shard.charged == 1 and shard.history[0].outcome == "lost"
    # And its late result, when it wakes, still counts once: first result wins, and the
    # attempt written off as lost is the one that ran (one execution, one line in the story)
    late = s.handle(ev.ShardSucceeded("w1", "j", 0, 1), now=4)
    assert ev.MergeShard("j", 0) in late and ev.AskReregister("w1") in late
    assert [(a.number, a.worker, a.outcome) for a in shard.history] == [
        (1, "w1", "ok (late)"),
        (2, "w2", "superseded"),
    ]
    assert shard.history[0].error is None and shard.history[0].ended == 4
    dropped = s.handle(ev.ShardSucceeded("w2", "j", 0, 2), now=5)
    assert dropped == [ev.DropDuplicate("j", 0, "w2", stories=(0,))]
    assert shard.history[1].outcome == "duplicate"  # it ran on: a second execution


def test_disconnect_hands_back_without_charging() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=2), now=0)
    s.handle(ev.JobAdded("j", SPEC, 2), now=0)
    s.handle(ev.WorkerDraining("w1"), now=1)
    s.handle(ev.WorkerReady("w2", slots=2), now=1)  # draining: w1 gets nothing new
    handback = (Lease(job_id="j", shard=0, attempt=1), Lease(job_id="j", shard=1, attempt=1))
    cmds = s.handle(ev.WorkerLeft("w1", handback), now=2)
    assert sorted(c.shard for c in _sends(cmds)) == [0, 1]
    assert all(sh.charged == 0 for sh in s.jobs["j"].shards)


def test_cancel_frees_credits_and_tells_workers() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.JobAdded("a", SPEC, 2), now=0)
    s.handle(ev.JobAdded("b", SPEC, 1), now=0)
    cmds = s.handle(ev.CancelRequested("a"), now=1)
    assert ev.CancelOnWorker("w1", "a") in cmds
    assert [(c.job_id, c.worker) for c in _sends(cmds)] == [("b", "w1")]  # the slot is free
    assert s.job_info("a").state == "cancelled"


def test_unknown_worker_is_asked_to_register_and_held_shards_are_adopted() -> None:
    s = _state()
    assert s.handle(ev.WorkerSeen("ghost"), now=0) == [ev.AskReregister("ghost")]
    s.handle(ev.JobAdded("j", SPEC, 2), now=0)
    cmds = s.handle(
        ev.WorkerReady("w9", slots=2, held=(Lease(job_id="j", shard=1, attempt=1),)), now=1
    )
    # the held shard is leased back, not re-sent; only shard 0 goes out
    assert [c.shard for c in _sends(cmds)] == [0]
    assert s.jobs["j"].shards[1].lease == "w9"


def test_forbidden_transition_raises_with_the_story() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.JobAdded("j", SPEC, 1), now=0)
    s.handle(ev.ShardSucceeded("w1", "j", 0, 1), now=1)
    with pytest.raises(InvalidTransition, match=r"done -> leased.*recent story"):
        s.jobs["j"].shards[0].transition(ShardState.LEASED, "test")


def test_prefetch_only_once_the_job_is_known_to_have_short_shards() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1, prefetch=2), now=0)
    # Given a new job / Then only the slot is filled: nothing is known of its shards yet
    sends = _sends(s.handle(ev.JobAdded("j", SPEC, 10), now=1))
    assert [c.shard for c in sends] == [0]
    # When a short shard ends (no round trip measured yet) / Then the slot and one queue place
    sends = _sends(s.handle(ev.ShardSucceeded("w1", "j", 0, 1, duration=0.01), now=1.01))
    assert [c.shard for c in sends] == [1, 2]
    assert len(s.workers["w1"].leases) == 2
    info = s.job_info("j")
    assert info.state == "running"


def test_the_window_covers_the_round_trip_up_to_the_workers_cap() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=2, prefetch=16), now=0)
    s.handle(ev.WorkerSeen("w1", rtt=0.004), now=0)
    s.handle(ev.JobAdded("j", SPEC, 100), now=0)
    # Given 1 ms shards and a 4 ms round trip: 2 slots x 4 ms / 1 ms = 8 queued behind 2
    s.handle(ev.ShardSucceeded("w1", "j", 0, 1, duration=0.001), now=1)
    w = s.workers["w1"]
    assert (w.window, w.leases.held) == (8, 10)
    assert worker_infos([w], {}, now=1, shm_peers=set())[0].window == 8
    # When the round trip grows to 100 ms / Then the window stops at the worker's own cap
    s.handle(ev.WorkerSeen("w1", rtt=0.1), now=1)
    s.handle(ev.ShardSucceeded("w1", "j", 1, 1, duration=0.001), now=1.1)
    assert (w.window, w.leases.held) == (16, 18)
    # And a shorter round trip is believed slowly (one sample in 8), a longer one at once
    s.handle(ev.WorkerSeen("w1", rtt=0.02), now=1.2)
    assert w.rtt == pytest.approx(0.09)


def test_shards_near_the_threshold_queue_one_per_slot_however_far_the_worker() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1, prefetch=64), now=0)
    s.handle(ev.WorkerSeen("w1", rtt=0.02), now=0)
    s.handle(ev.JobAdded("j", SPEC, 10), now=0)
    # 50 ms shards, 20 ms away: a round trip is under one shard, so one waits (no hoarding)
    sends = _sends(s.handle(ev.ShardSucceeded("w1", "j", 0, 1, duration=0.05), now=1))
    assert [c.shard for c in sends] == [1, 2]


def test_long_shards_are_never_queued_on_a_worker() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1, prefetch=2), now=0)
    s.handle(ev.JobAdded("j", SPEC, 10), now=0)
    # A shard at the threshold (0.1 s) is not short: one shard per slot, as without prefetch
    sends = _sends(s.handle(ev.ShardSucceeded("w1", "j", 0, 1, duration=0.1), now=1))
    assert [c.shard for c in sends] == [1]


def test_lost_worker_charges_only_its_executing_shards_not_its_queue() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1, prefetch=1), now=0)
    s.handle(ev.JobAdded("j", SPEC, 4), now=0)
    s.handle(ev.ShardSucceeded("w1", "j", 0, 1, duration=0.01), now=0.1)  # leases 1, then 2
    assert list(s.workers["w1"].leases) == [("j", 1), ("j", 2)]
    # When w1 goes silent past the expiry / Then shard 1 (running) is charged, 2 (queued) not
    s.handle(ev.Tick(), now=5)
    shards = s.jobs["j"].shards
    assert shards[1].charged == 1 and shards[1].history[-1].outcome == "lost"
    assert shards[2].charged == 0 and shards[2].history[-1].outcome == "never started"
    assert shards[2].state is ShardState.QUEUED
    # And a worker that comes later runs them both
    sends = _sends(s.handle(ev.WorkerReady("w2", slots=2), now=5))
    assert sorted(c.shard for c in sends) == [1, 2]


def test_a_draining_worker_gets_no_prefetch() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1, prefetch=4), now=0)
    s.handle(ev.JobAdded("j", SPEC, 10), now=0)
    s.handle(ev.WorkerDraining("w1"), now=0.05)
    assert _sends(s.handle(ev.ShardSucceeded("w1", "j", 0, 1, duration=0.01), now=0.1)) == []


def test_a_later_short_job_cannot_queue_ahead_of_an_earlier_job_waiting_for_a_slot() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1, prefetch=1), now=0)
    s.handle(ev.JobAdded("a", SPEC, 1), now=0)
    s.handle(ev.JobAdded("b", SPEC, 9), now=0)
    s.handle(ev.ShardFailed("w1", "a", 0, 1, _error()), now=0.1)  # a waits out a backoff...
    s.handle(ev.ShardSucceeded("w1", "b", 0, 1, duration=0.01), now=0.11)  # ...b is short
    assert list(s.workers["w1"].leases) == [("b", 1), ("b", 2)]
    # When a's retry is due while b's shards fill the worker
    assert _sends(s.handle(ev.Tick(), now=1.0)) == []
    # Then b queues no more shards ahead of it: a gets the next free slot
    assert _sends(s.handle(ev.ShardSucceeded("w1", "b", 1, 1, duration=0.01), now=1.1)) == []
    sends = _sends(s.handle(ev.ShardSucceeded("w1", "b", 2, 1, duration=0.01), now=1.2))
    assert [(c.job_id, c.shard) for c in sends] == [("a", 0), ("b", 3)]


OP_SPEC = JobSpec(op="column_stats", dataset="/data/x.npy", max_attempts=2)


def _batching(s: MasterState, shards: int = 40) -> list[ev.SendTask]:
    """w1 (1 slot, prefetch 1) and a batchable job whose first shard proved short."""
    s.handle(ev.WorkerReady("w1", slots=1, prefetch=1), now=0)
    s.handle(ev.JobAdded("j", OP_SPEC, shards, batchable=True), now=0)
    return _sends(s.handle(ev.ShardSucceeded("w1", "j", 0, 1, duration=0.01), now=0.1))


def test_short_shards_of_a_dataset_op_travel_in_shrinking_batches() -> None:
    s = _state()
    sends = _batching(s)
    # 39 ready shards, 1 slot: a task takes ceil(39 / 2) = 16 (the cap), the next 12
    assert [(c.shard, len(c.more)) for c in sends] == [(1, 15), (17, 11)]
    assert [m for m, _ in sends[0].more] == list(range(2, 17))
    assert s.workers["w1"].credits(s.workers["w1"].prefetch) == 0  # two tasks held, 28 shards
    # When the first batch comes back folded / Then its 16 shards are done, merged once
    cmds = s.handle(ev.ShardSucceeded("w1", "j", 1, 1, 0.1, sends[0].more), now=0.2)
    merges = [c for c in cmds if isinstance(c, ev.MergeShard)]
    assert merges == [ev.MergeShard("j", 1, tuple(range(2, 17)))]
    assert all(s.jobs["j"].shards[i].state is ShardState.DONE for i in range(17))
    # And the next task is smaller: the tail stays fine grained
    assert [len(c.more) for c in _sends(cmds)] == [5]


def test_a_batch_holding_a_shard_merged_already_is_dropped_and_the_rest_rerun() -> None:
    s = _state()
    sends = _batching(s, shards=7)
    first = sends[0]
    assert (first.shard, first.more) == (1, ((2, 1), (3, 1)))
    # Given shard 2 merged meanwhile from another worker's late result
    s.handle(ev.ShardSucceeded("w2", "j", 2, 1, 0.01), now=0.15)
    # When the batch arrives / Then nothing of it is merged; 1 and 3 go back uncharged
    cmds = s.handle(ev.ShardSucceeded("w1", "j", 1, 1, 0.1, first.more), now=0.2)
    assert not [c for c in cmds if isinstance(c, ev.MergeShard)]
    shards = s.jobs["j"].shards
    assert shards[2].merged == 1 and s.job_info("j").duplicates == 1
    for i in (1, 3):
        outcomes = [a.outcome for a in shards[i].history]
        assert shards[i].charged == 0 and "dropped with its batch" in outcomes
        assert shards[i].state in (ShardState.QUEUED, ShardState.LEASED)


def test_a_shard_failing_in_a_batch_is_charged_alone_and_the_others_rerun_alone() -> None:
    s = _state()
    first = _batching(s, shards=7)[0]
    # When shard 2 of the batch raises / Then 2 is charged; 1 and 3 rerun uncharged, alone
    s.handle(ev.ShardFailed("w1", "j", 2, 1, _error(), 0.1, ((1, 1), (3, 1))), now=0.2)
    shards = s.jobs["j"].shards
    assert shards[2].charged == 1
    assert [shards[i].charged for i in (1, 3)] == [0, 0] and shards[1].solo and shards[3].solo
    assert shards[1].history[0].outcome == "its batch failed"
    assert first.more == ((2, 1), (3, 1))


def test_a_crashed_batch_charges_nobody_and_reruns_each_shard_alone() -> None:
    s = _state()
    _batching(s, shards=7)
    crash = ErrorInfo(kind="crash", type="ChildCrashed", message="killed by SIGKILL")
    cmds = s.handle(ev.ShardFailed("w1", "j", 1, 1, crash, 0.1, ((2, 1), (3, 1))), now=0.2)
    shards = s.jobs["j"].shards
    assert [shards[i].charged for i in (1, 2, 3)] == [0, 0, 0]
    assert all(shards[i].solo for i in (1, 2, 3))
    # Then each goes out on its own: no batch holds a shard whose batch died
    assert all(not c.more for c in _sends(cmds))


def test_a_lost_worker_charges_nobody_of_a_running_batch() -> None:
    s = _state()
    first = _batching(s, shards=8)[0]
    members = [first.shard, *(m for m, _ in first.more)]
    s.handle(ev.Tick(), now=10)  # w1 expires
    shards = s.jobs["j"].shards
    assert all(shards[i].charged == 0 and shards[i].solo for i in members)
    assert {shards[i].history[-1].outcome for i in members} == {"lost with its batch"}


def test_map_jobs_and_failed_shards_never_batch() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1, prefetch=1), now=0)
    s.handle(ev.JobAdded("m", SPEC, 10), now=0)  # not batchable: a map job
    sends = _sends(s.handle(ev.ShardSucceeded("w1", "m", 0, 1, duration=0.01), now=0.1))
    assert [c.more for c in sends] == [(), ()]


def test_a_small_job_of_another_client_gets_its_share_of_the_slots_at_once() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=2), now=0)
    s.handle(ev.JobAdded("big", SPEC, 1000, owner="alice"), now=0)
    s.handle(ev.JobAdded("small", SPEC, 3, owner="bob"), now=0.1)

    def ends(job: str, shard: int, now: float) -> list[tuple[str, int]]:
        cmds = s.handle(ev.ShardSucceeded("w1", job, shard, 1, 1.0), now=now)
        return [(c.job_id, c.shard) for c in _sends(cmds)]

    # When alice's shards end / Then the first freed slot is bob's, the next alice's again
    assert ends("big", 0, 1.0) == [("small", 0)]
    assert ends("big", 1, 1.1) == [("big", 2)]
    # And each client keeps one slot: bob's freed slot stays bob's while he has shards
    assert ends("small", 0, 1.2) == [("small", 1)]
    assert ends("small", 1, 1.3) == [("small", 2)]
    assert ends("small", 2, 1.4) == [("big", 3)]


def test_within_one_client_a_higher_priority_job_goes_first_and_equal_ones_take_turns() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.JobAdded("first", SPEC, 10), now=0)
    s.handle(ev.JobAdded("second", SPEC, 10), now=0.1)
    urgent = SPEC.model_copy(update={"priority": 5})
    s.handle(ev.JobAdded("urgent", urgent, 2), now=0.2)
    got = []
    for i, (job, shard) in enumerate(
        [("first", 0), ("urgent", 0), ("urgent", 1), ("second", 0), ("first", 1)]
    ):
        cmds = s.handle(ev.ShardSucceeded("w1", job, shard, 1, 1.0), now=1 + i)
        got += [(c.job_id, c.shard) for c in _sends(cmds)]
    # urgent first; then first and second (equal priority) take turns
    assert got == [("urgent", 0), ("urgent", 1), ("second", 0), ("first", 1), ("second", 1)]


def _straggling(s: MasterState) -> list[tuple[str, int]]:
    """w1 and w2, one slot each; job j's shards take 1 s; shard 3 stalls on w2 from t=1."""
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.WorkerReady("w2", slots=1), now=0)
    s.handle(ev.JobAdded("j", SPEC, 5), now=0)  # 0 on w1, 1 on w2
    s.handle(ev.ShardSucceeded("w1", "j", 0, 1, 1.0), now=1)  # 2 on w1
    s.handle(ev.ShardSucceeded("w2", "j", 1, 1, 1.0), now=1)  # 3 on w2
    s.handle(ev.ShardSucceeded("w1", "j", 2, 1, 1.0), now=2)  # 4 on w1
    cmds = s.handle(ev.ShardSucceeded("w1", "j", 4, 1, 0.5), now=2.5)  # w1 idle; 3 ran 1.5 s
    return [(c.worker, c.shard) for c in _sends(cmds)]


def test_a_straggler_gets_a_backup_on_an_idle_worker_and_the_first_result_wins() -> None:
    s = _state()
    # Given w1 idle while shard 3 has run 1.5 s on w2 (median 1 s, threshold 2 x: not yet)
    assert _straggling(s) == []
    assert s.next_deadline() == pytest.approx(3.0)  # started at 1 + max(1 s, 2 x 1 s)
    # When the Tick comes / Then a backup of shard 3 starts on w1
    sends = _sends(s.handle(ev.Tick(), now=3.01))
    assert [(c.worker, c.shard) for c in sends] == [("w1", 3)]
    shard = s.jobs["j"].shards[3]
    assert (shard.lease, shard.backup) == ("w2", "w1")
    # When the backup's result comes first / Then it is merged, w2's attempt is cancelled there
    cmds = s.handle(ev.ShardSucceeded("w1", "j", 3, sends[0].attempt, 0.5), now=3.5)
    assert ev.CancelOnWorker("w2", "j", (3,)) in cmds
    assert [a.outcome for a in shard.history] == ["superseded", "ok"]
    assert [a.backup for a in shard.history] == [False, True] and shard.charged == 0
    assert s.job_info("j").state == "done"
    # And the loser's late result is a counted duplicate, never a second merge
    s.handle(ev.ShardSucceeded("w2", "j", 3, 1, 5.0), now=6)
    assert shard.merged == 1 and s.job_info("j").duplicates == 1
    assert not s.workers["w1"].leases and not s.workers["w2"].leases


def test_a_lost_straggler_leaves_its_backup_running_uncharged() -> None:
    s = _state()
    _straggling(s)
    s.handle(ev.Tick(), now=3.01)
    # When w2 (holding the straggler) expires / Then the backup on w1 carries on alone
    s.handle(ev.WorkerSeen("w1"), now=3.5)
    s.handle(ev.Tick(), now=4.5)
    assert "w2" not in s.workers
    shard = s.jobs["j"].shards[3]
    assert (shard.lease, shard.backup, shard.charged, shard.state) == (
        "w1",
        None,
        0,
        ShardState.LEASED,
    )
    assert shard.history[0].outcome.startswith("lost")
    s.handle(ev.ShardSucceeded("w1", "j", 3, 2, 0.5), now=4.6)
    assert s.job_info("j").state == "done"


def test_no_backups_when_the_job_says_never() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.WorkerReady("w2", slots=1), now=0)
    never = SPEC.model_copy(update={"speculate_after": 0})
    s.handle(ev.JobAdded("j", never, 5), now=0)
    for shard, w, now in ((0, "w1", 1), (1, "w2", 1), (2, "w1", 2), (4, "w1", 2.5)):
        s.handle(ev.ShardSucceeded(w, "j", shard, 1, 1.0), now=now)
    assert _sends(s.handle(ev.Tick(), now=3.9)) == [] and s.next_deadline() == pytest.approx(4)


def _one_slow(fast: float, slow: float, shards: int = 6) -> tuple[MasterState, list[ev.SendTask]]:
    """Job j of `shards` on w1 and w2 (one slot each): w1 runs 0, 2, 3 in `fast` s each and
    holds 4; w2 runs 1 in `slow` s, ending then. The state, and what w2's result sent."""
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.WorkerReady("w2", slots=1), now=0)
    s.handle(ev.JobAdded("j", SPEC, shards), now=0)  # 0 on w1, 1 on w2
    for k, shard in enumerate((0, 2, 3), start=1):
        s.handle(ev.ShardSucceeded("w1", "j", shard, 1, fast), now=k * fast)
    return s, _sends(s.handle(ev.ShardSucceeded("w2", "j", 1, 1, slow), now=slow))


def test_a_known_slow_worker_leaves_a_jobs_last_shard_to_a_faster_one() -> None:
    # Given w2 known slow for j (3.5 s against a 1 s median) when one shard is left
    s, sends = _one_slow(1.0, 3.5)
    # Then w2 does not take it: w1 is free in 0.5 s and runs it in 1
    assert sends == [] and list(s.jobs["j"].ready) == [5]
    # When w1 finishes shard 4 / Then shard 5 is w1's, and no backup is needed
    sends = _sends(s.handle(ev.ShardSucceeded("w1", "j", 4, 1, 1.0), now=4))
    assert [(c.worker, c.shard, c.backup) for c in sends] == [("w1", 5, False)]


def test_a_known_slow_worker_takes_a_shard_while_the_others_have_plenty() -> None:
    # Given w2 10x slower (2.5 s against 0.25) and 15 shards ready: w1 needs 3.75 s for them
    _, sends = _one_slow(0.25, 2.5, shards=20)
    # Then w2 takes the next one: it is done before the others would get to it
    assert [(c.worker, c.shard, c.backup) for c in sends] == [("w2", 5, False)]


def _two_slow() -> MasterState:
    """Job j of 8 on w1, w2, w3 (one slot each): w1 runs 0, 3, 4 in 1 s each and holds 5 from
    3 s; w2 and w3 ran 1 and 2 in 3.5 s (known slow), ending together at 3.5 s."""
    s = _state()
    for w in ("w1", "w2", "w3"):
        s.handle(ev.WorkerReady(w, slots=1), now=0)
    s.handle(ev.JobAdded("j", SPEC, 8), now=0)  # 0 on w1, 1 on w2, 2 on w3
    for k, shard in enumerate((0, 3, 4), start=1):
        s.handle(ev.ShardSucceeded("w1", "j", shard, 1, 1.0), now=k)
    done = [ev.ShardSucceeded(w, "j", i, 1, 3.5) for w, i in (("w2", 1), ("w3", 2))]
    assert _sends(s.handle_all(done, now=3.5)) == []  # 6 and 7 are left to w1
    return s


def test_a_backup_goes_to_a_worker_known_slow_for_the_job_only_if_no_other_is_idle() -> None:
    # Given w2 known 10x slower, and w1's shard 4 running for 1.75 s: a straggler
    _, sends = _one_slow(0.25, 2.5)
    # Then w2, the only idle worker, takes its backup, not the last shard: a backup anywhere
    # beats a hung shard, and the first result wins
    assert [(c.worker, c.shard, c.backup) for c in sends] == [("w2", 4, True)]
    # And where a worker not slow for the job is idle too, it takes the backup
    s = _two_slow()
    s.handle(ev.WorkerReady("w4", slots=1), now=3.6)  # it takes shard 6
    plan = plan_backups(s.active, s.workers, {"w2": 1, "w4": 1}, s.timing, now=5.0)
    assert [(shard.index, w.worker_id) for _, shard, w in plan.backups] == [(5, "w4")]


def test_slow_hosts_take_a_jobs_shards_when_no_faster_worker_is_left() -> None:
    # Given w2 and w3 known slow for j, leaving its last shards to w1
    s = _two_slow()
    # When w1, the only faster worker, leaves / Then the slow hosts take the shards
    handback = (Lease(job_id="j", shard=5, attempt=1),)
    sends = _sends(s.handle(ev.WorkerLeft("w1", handback), now=3.6))
    assert sorted(c.worker for c in sends) == ["w2", "w3"]


def test_a_slow_host_leaves_shards_to_others_for_as_long_as_it_would_run_one() -> None:
    # Given w2 known slow for j (3.5 s a shard), leaving shard 5 to w1 at 3.5
    s, _ = _one_slow(1.0, 3.5)
    job, w2 = s.jobs["j"], s.workers["w2"]
    assert SlowHosts(s.workers, s.timing, 3.5).leaves(job, w2)
    # When no shard of j is leased for 3.5 s (w1 hung) / Then w2 takes it after all
    assert SlowHosts(s.workers, s.timing, 6.9).leaves(job, w2)
    assert not SlowHosts(s.workers, s.timing, 7.0).leaves(job, w2)
    # And a lease of j meanwhile starts the wait anew
    s.handle(ev.ShardSucceeded("w1", "j", 4, 1, 1.0), now=4)  # w1 takes 5
    assert job.declined_at is None


def test_a_known_slow_workers_shard_is_a_straggler_after_one_median() -> None:
    # A shard on a slow host (by min_age or more) is a straggler after one median, or
    # min_age if shorter; on any other worker after factor x the median, min_age at least
    s = _one_slow(0.25, 2.5)[0]
    job = s.jobs["j"]  # median 0.25 s, w2 2.25 s over it
    assert wait_before_backup(job, "w2", s.timing) == pytest.approx(0.25)
    assert wait_before_backup(job, "w1", s.timing) == pytest.approx(1.0)
    s = _one_slow(1.0, 3.5)[0]
    job = s.jobs["j"]  # median 1 s, w2 2.5 s over it
    assert wait_before_backup(job, "w2", s.timing) == pytest.approx(1.0)
    assert wait_before_backup(job, "w1", s.timing) == pytest.approx(2.0)


def test_a_worker_slow_by_less_than_the_minimum_age_waits_the_minimum_age() -> None:
    s, _ = _one_slow(0.01, 0.05)  # w2 5x slower, but by 40 ms: noise
    # When w1 goes idle / Then w2's shard 5 is backed up only at speculate_min_age (1 s)
    assert _sends(s.handle(ev.ShardSucceeded("w1", "j", 4, 1, 0.01), now=0.06)) == []
    assert s.next_deadline() == pytest.approx(1.05)


def test_owner_priority_and_run_times_survive_a_restart() -> None:
    s = _state()
    done = ShardState.DONE
    ok = (AttemptInfo(attempt=1, worker="w0", started=0.0, ended=1.0, outcome="ok", ran=1.0),)
    for job_id, owner, priority in (("a", "alice", 0), ("b", "alice", 9), ("c", "bob", 0)):
        spec = SPEC.model_copy(update={"owner": owner, "priority": priority})
        settled = {i: (done, ok) for i in range(3)} if job_id == "a" else {}
        s.handle(ev.JobRestored(job_id, spec, 10, 0.0, JobState.RUNNING, settled), now=0)
    s.handle(ev.RestoreDone(), now=0)
    assert s.jobs["a"].owner == "alice" and s.jobs["a"].median_run == 1.0
    # When a worker with 2 slots registers after the hold
    sends = _sends(s.handle(ev.WorkerReady("w1", slots=2), now=5))
    # Then bob gets a slot (his share), alice's other one goes to her priority-9 job
    assert sorted(c.job_id for c in sends) == ["b", "c"]


def test_a_backup_holder_that_re_registers_keeps_its_backup() -> None:
    s = _state()
    _straggling(s)
    s.handle(ev.Tick(), now=3.01)  # backup of 3 on w1
    # When w1 re-registers still holding its backup / Then the backup stays its own
    s.handle(ev.WorkerReady("w1", slots=1, held=(Lease(job_id="j", shard=3, attempt=2),)), now=3.2)
    shard = s.jobs["j"].shards[3]
    assert (shard.lease, shard.backup) == ("w2", "w1") and ("j", 3) in s.workers["w1"].leases
    # And when w2 fails it, the backup carries on as the one attempt
    s.handle(ev.ShardFailed("w2", "j", 3, 1, _error()), now=3.3)
    assert (shard.lease, shard.backup, shard.charged) == ("w1", None, 0)
    s.handle(ev.ShardSucceeded("w1", "j", 3, 2, 0.5), now=3.5)
    assert s.job_info("j").state == "done" and s.jobs["j"].backups == 0


def test_a_forged_round_trip_cannot_overflow_the_window() -> None:
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1, prefetch=8), now=0)
    s.handle(ev.WorkerSeen("w1", rtt=1e308), now=0)
    assert s.workers["w1"].queue_window(0.001) == 8


def test_a_job_may_not_ask_for_backups_below_its_median() -> None:
    for bad in (0.5, 1e-9, float("inf")):
        with pytest.raises(ValueError, match="at least 1"):
            JobSpec(op="map", function="m:f", speculate_after=bad)
    assert JobSpec(op="map", function="m:f", speculate_after=0).speculate_after == 0


def test_an_idle_worker_leaving_while_every_shard_is_leased_costs_nothing() -> None:
    # Given a job with a median (3 merged shards) whose last shards are all leased, and an
    # idle third worker
    s = _state()
    for w in ("w1", "w2"):
        s.handle(ev.WorkerReady(w, slots=1), now=0)
    s.handle(ev.JobAdded("j", SPEC, 5), now=0)
    for shard, w, now in ((0, "w1", 0.1), (1, "w2", 0.1), (2, "w1", 0.2)):
        s.handle(ev.ShardSucceeded(w, "j", shard, 1, 0.1), now=now)
    s.handle(ev.WorkerReady("idle", slots=1), now=0.3)
    # When the idle worker leaves, and another expires silent
    s.handle(ev.WorkerLeft("idle"), now=0.4)
    s.handle(ev.WorkerReady("quiet", slots=1), now=0.4)
    s.handle(ev.Tick(), now=0.4 + s.timing.expiry + 1)
    # Then the brain goes on (no stale worker looked up), and the expired workers' shards
    # go to the next worker
    assert set(s.workers) == set() and s.room == set()
    sends = _sends(s.handle(ev.WorkerReady("w3", slots=2), now=10))
    assert sorted(c.shard for c in sends) == [3, 4]
    assert sorted(s.workers["w3"].leases) == [("j", 3), ("j", 4)]


def test_results_that_arrive_together_are_handed_out_once_as_if_each_came_alone() -> None:
    # Given two one-slot workers each running a shard of a 6-shard job
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.WorkerReady("w2", slots=1), now=0)
    first = _sends(s.handle(ev.JobAdded("j", SPEC, 6), now=1))
    # When both results come in one bundle
    together = [ev.ShardSucceeded(c.worker, "j", c.shard, c.attempt) for c in first]
    cmds = s.handle_all(together, now=2)
    # Then both merge, and each freed slot gets the next shard, from one dispatch
    assert [type(c) for c in cmds] == [ev.MergeShard, ev.MergeShard, ev.SendTask, ev.SendTask]
    assert sorted((c.worker, c.shard) for c in _sends(cmds)) == [("w1", 2), ("w2", 3)]


def test_a_shard_that_raised_then_was_lost_fails_the_job_with_what_it_raised() -> None:
    # Given a shard that raised ValueError twice (with a traceback)
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.JobAdded("j", SPEC, 1), now=0)
    raised = ErrorInfo(kind="error", type="ValueError", message="bad row 7", traceback="TB-7")
    now = 0.0
    for attempt in (1, 2):
        s.handle(ev.WorkerSeen("w1"), now=now)
        s.handle(ev.ShardFailed("w1", "j", 0, attempt, raised), now=now)
        now = s.next_deadline() or now
        s.handle(ev.Tick(), now=now)
    # When its third attempt is lost with its silent worker
    cmds = s.handle(ev.Tick(), now=now + 3.0)
    ended = next(c for c in cmds if isinstance(c, ev.JobEnded))
    # Then the job's error names the ValueError, its traceback and the loss beside it
    assert ended.state == "failed"
    head = ended.error.splitlines()[0]
    assert "raised ValueError: bad row 7" in head and "1 attempt(s) lost" in head
    assert "TB-7" in ended.error and "attempt 3 on worker w1: lost" in ended.error
    # And the error a client catches is the task's own exception
    failure = telling_error(s.jobs["j"].shards[0].history)
    with pytest.raises(RemoteError) as caught:
        unpack_result(JobResult(req=1, job=s.job_info("j"), failure=failure), [])
    assert caught.value.remote_type == "ValueError" and caught.value.remote_traceback == "TB-7"
    assert "lost" in str(caught.value)


def test_attempt_numbers_rise_through_commits_and_a_restart_numbers_above_them() -> None:
    # Given a job's first leases: their number goes out only after the loop commits it, once
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=2), now=0)
    cmds = s.handle(ev.JobAdded("j", SPEC, 3), now=0)
    given = [type(c) for c in cmds if isinstance(c, ev.AttemptsGiven | ev.SendTask)]
    assert given == [ev.AttemptsGiven, ev.SendTask, ev.SendTask]
    assert ev.AttemptsGiven("j", 1) in cmds
    # And the next shard's attempt 1 commits nothing; a retry's attempt 2 is committed first
    cmds = s.handle(ev.ShardFailed("w1", "j", 0, 1, _error()), now=1)
    assert [(c.shard, c.attempt) for c in _sends(cmds)] == [(2, 1)]
    assert not [c for c in cmds if isinstance(c, ev.AttemptsGiven)]
    cmds = s.handle(ev.ShardSucceeded("w1", "j", 1, 1), now=2)  # after the retry backoff
    given = [type(c) for c in cmds if isinstance(c, ev.AttemptsGiven | ev.SendTask)]
    assert given == [ev.AttemptsGiven, ev.SendTask] and ev.AttemptsGiven("j", 2) in cmds
    assert [(c.shard, c.attempt) for c in _sends(cmds)] == [(0, 2)]
    # When a restarted master resumes a job whose earlier master gave attempts up to 2
    s = _state()
    s.handle(ev.JobRestored("j", SPEC, 2, 0.0, JobState.RUNNING, {}, attempts_given=2), now=0)
    s.handle(ev.RestoreDone(), now=0)
    cmds = s.handle(ev.WorkerReady("w2", slots=1), now=5)
    cmds += s.handle(ev.Tick(), now=5)
    # Then its new attempts are numbered above them: an execution a worker reports late
    # (attempt 1 or 2 of the earlier master) has a number of its own in the story
    (send,) = _sends(cmds)
    assert send.attempt == 3 and ev.AttemptsGiven("j", 3) in cmds
    s.handle(ev.ShardSucceeded("w1", "j", send.shard, 1, duration=0.5), now=6)
    history = s.jobs["j"].shards[send.shard].history
    assert sorted((a.number, a.worker) for a in history) == [(1, "w1"), (3, "w2")]


def test_an_attempt_written_off_whose_worker_re_registers_holding_it_runs_on() -> None:
    # Given a worker expired while running a shard (its attempt written off as lost)
    s = _state()
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.JobAdded("j", SPEC, 1), now=0)
    s.handle(ev.Tick(), now=3.0)
    shard = s.jobs["j"].shards[0]
    assert [(a.number, a.outcome) for a in shard.history] == [(1, "lost")]
    # When it re-registers still running that attempt
    held = (Lease(job_id="j", shard=0, attempt=1),)
    s.handle(ev.WorkerReady("w1", slots=1, held=held), now=3.1)
    # Then the story has that one execution, running again, not a second attempt 1
    assert [(a.number, a.worker, a.outcome) for a in shard.history] == [(1, "w1", "running")]
    assert shard.lease == "w1"
    s.handle(ev.ShardSucceeded("w1", "j", 0, 1, duration=0.5), now=3.5)
    assert [(a.number, a.outcome, a.ended) for a in shard.history] == [(1, "ok", 3.5)]
