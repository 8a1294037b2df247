"""The master's records of shards, jobs and workers, and the one shard transition table."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from enum import StrEnum

from shardmill.errors import InvalidTransition
from shardmill.protocol import AttemptInfo, ErrorInfo, JobSpec, ShardInfo


class ShardState(StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"  # backing off before a retry
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"  # quarantined: attempts exhausted or not retryable
    CANCELLED = "cancelled"


class JobState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


_S = ShardState
# A late result may land on a shard that went back to the queue: first result wins.
TRANSITIONS: dict[ShardState, frozenset[ShardState]] = {
    _S.QUEUED: frozenset({_S.LEASED, _S.DONE, _S.CANCELLED}),
    _S.WAITING: frozenset({_S.QUEUED, _S.DONE, _S.CANCELLED}),
    _S.LEASED: frozenset({_S.DONE, _S.QUEUED, _S.WAITING, _S.FAILED, _S.CANCELLED}),
    _S.DONE: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}
TERMINAL = frozenset({_S.DONE, _S.FAILED, _S.CANCELLED})


@dataclass
class Attempt:
    number: int
    worker: str
    started: float
    ended: float | None = None
    outcome: str = "running"
    error: ErrorInfo | None = None

    def info(self, offset: float = 0.0) -> AttemptInfo:
        """As users read it: `offset` turns the master's clock into wall-clock time."""
        return AttemptInfo(
            attempt=self.number,
            worker=self.worker,
            started=self.started + offset,
            ended=None if self.ended is None else self.ended + offset,
            outcome=self.outcome,
            error=self.error,
        )


@dataclass
class Shard:
    job_id: str
    index: int
    state: ShardState = ShardState.QUEUED
    charged: int = 0  # failed attempts that count against max_attempts
    solo: bool = False  # never batched again: its batch failed, and it may be the reason
    lease: str | None = None
    not_before: float = 0.0
    merged: int = 0
    history: list[Attempt] = field(default_factory=list)
    story: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=8))

    def transition(self, new: ShardState, why: str) -> None:
        """The only way a shard changes state; a forbidden move raises with the shard's story."""
        if new not in TRANSITIONS[self.state]:
            raise InvalidTransition(
                f"shard {self.index} of job {self.job_id}: {self.state} -> {new} ({why}) is not "
                f"allowed; recent story: {list(self.story)}"
            )
        self.story.append(f"{self.state}->{new}: {why}")
        self.state = new

    def info(self, *, history: bool, offset: float = 0.0) -> ShardInfo:
        return ShardInfo(
            index=self.index,
            state=str(self.state),
            attempts=len(self.history),
            worker=self.lease,
            merged=self.merged,
            history=[a.info(offset) for a in self.history] if history else [],
        )


@dataclass
class Job:
    job_id: str
    spec: JobSpec
    shards: list[Shard]
    submitted_at: float
    state: JobState = JobState.RUNNING
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    duplicates: int = 0
    ok_runs: int = 0  # shards run to success here, and their seconds: is it a short-shard job?
    ok_seconds: float = 0.0
    batchable: bool = False
    ready: collections.deque[int] = field(default_factory=collections.deque)
    counts: collections.Counter[ShardState] = field(default_factory=collections.Counter)

    def move(self, shard: Shard, new: ShardState, why: str) -> None:
        """Transition a shard and keep the job's per-state counts true."""
        old = shard.state
        shard.transition(new, why)
        self.counts[old] -= 1
        self.counts[new] += 1

    @property
    def finished(self) -> bool:
        return self.state is not JobState.RUNNING

    def prefetches(self, below: float) -> bool:
        """Whether its shards may queue on a worker behind a running one: only once they are
        known to be short (mean below `below` seconds), where a round trip per shard is a real
        cost and a shard queued behind another can delay the job's end by little."""
        return self.ok_runs > 0 and self.ok_seconds < below * self.ok_runs


@dataclass
class Worker:
    worker_id: str
    slots: int
    last_seen: float
    # (job, shard) -> the task it went in, (job, first shard), in the order they were leased:
    # the worker runs tasks first come, first served, so the oldest `slots` tasks are the
    # executing ones and the rest wait in its queue. A batch is one task of several shards.
    leases: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    prefetch: int = 0
    draining: bool = False
    done: int = 0
    failed: int = 0

    def tasks(self) -> list[tuple[str, int]]:
        """Its tasks, oldest first."""
        return list(dict.fromkeys(self.leases.values()))

    def credits(self, prefetch: bool) -> int:
        """Tasks it may be sent now: free slots, plus its queue when the job prefetches."""
        if self.draining:
            return 0
        held = len(set(self.leases.values()))
        return max(0, self.slots + (self.prefetch if prefetch else 0) - held)
