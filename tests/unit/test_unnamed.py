"""Messages under ids ZeroMQ made up (a replaced connection): refused, except a result or a
failure, which is its real worker's (the shard's history, or the worker holding it, names it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from shardmill.master.brain import events as ev
from shardmill.master.brain.state import MasterState
from shardmill.master.unnamed import Unnamed, generated
from shardmill.wire.codec import encode
from shardmill.wire.protocol import ErrorInfo, Heartbeat, Lease, Ready, ShardDone, ShardFailed
from shardmill.wire.spec import JobSpec

SPEC = JobSpec(op="map", function="m:f", max_attempts=3)
PHANTOM = b"\x00\xe4\x3c\x98\x69"


def _unnamed() -> tuple[Unnamed, Counter]:
    counter = Counter("u", "u", ("outcome",), registry=CollectorRegistry())
    return Unnamed(counter), counter


def _count(counter: Counter, outcome: str) -> float:
    return counter.labels(outcome)._value.get()


def test_only_ids_zeromq_made_up_are_unnamed() -> None:
    assert generated(PHANTOM)
    assert not generated(b"host-12-ab12") and not generated(b"")


def test_a_resent_result_is_its_real_workers_and_anything_else_is_refused() -> None:
    # Given w1 running shard 0 (attempt 1) and a restarted master's adopted shard 1
    s = MasterState()
    s.handle(ev.WorkerReady("w1", slots=1), now=0)
    s.handle(ev.JobAdded("j", SPEC, 3), now=0)
    s.handle(ev.WorkerReady("w2", slots=1, held=(Lease(job_id="j", shard=2, attempt=4),)), now=0)
    unnamed, counter = _unnamed()
    # When reports of both arrive under a made-up id / Then each is its holder's
    done = encode(ShardDone(job_id="j", shard=0, attempt=1))
    assert unnamed.claim(s.jobs, done, PHANTOM) == "w1"
    failed = encode(ShardFailed(job_id="j", shard=2, attempt=4, error=ErrorInfo(kind="error")))
    assert unnamed.claim(s.jobs, failed, PHANTOM) == "w2"
    # And a READY, a heartbeat, garbage and a report of no known job are refused
    ready = encode(Ready(slots=1, hostname="h", pid=1, version="0"))
    for part in (
        ready,
        encode(Heartbeat()),
        [b"\xc1"],
        encode(ShardDone(job_id="x", shard=0, attempt=1)),
    ):
        assert unnamed.claim(s.jobs, part, PHANTOM) is None
    assert _count(counter, "matched") == 2 and _count(counter, "refused") == 4
