"""The brain's records: attempts, shards, jobs and workers, and the settings it decides with."""

from __future__ import annotations

import collections
import itertools
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field

from shardmill.master.brain.attempt import Attempt, find
from shardmill.master.brain.transitions import (
    JOB_MOVES,
    SHARD_MOVES,
    JobState,
    ShardState,
    Story,
    move,
    new_story,
)
from shardmill.wire.protocol import ErrorInfo, JobInfo, ShardInfo
from shardmill.wire.spec import JobSpec

# What one task costs a worker beyond its run, about (agent, child, pipes; with bundles and
# the child's pipe queue, 40-50 us of CPU each on a 2-core VM): a window is sized as if no task
# took less, or a 20 us no-op would ask for a queue of thousands. At 250 us (before bundles)
# no-op windows were a third as deep, and one-per-message throughput 40 % lower.
MIN_TASK_SECONDS = 0.00005


@dataclass(frozen=True)
class Timing:
    heartbeat_interval: float = 1.0
    heartbeat_liveness: int = 3
    retry_backoff: float = 0.05
    retry_backoff_max: float = 5.0
    prefetch_below: float = 0.1  # queue shards on workers for jobs whose shards are this short
    speculate_after: float = 2.0  # x the job's median shard time: a backup attempt (0: never)
    speculate_min_age: float = 1.0  # seconds, at least, before one

    @property
    def expiry(self) -> float:
        return self.heartbeat_interval * self.heartbeat_liveness


@dataclass(frozen=True)
class Limits:
    """What one job, and one client, may ask of the master."""

    max_shards: int = 100_000
    max_queued_jobs: int = 1_000  # unfinished jobs per client key
    finished_kept: int = 10_000  # whole finished jobs kept without a state dir...
    finished_bytes: int = 256 << 20  # ...and their results' bytes (archive.py)


@dataclass
class Shard:
    job_id: str
    index: int
    state: ShardState = ShardState.QUEUED
    charged: int = 0  # failed attempts that count against max_attempts
    solo: bool = False  # never batched again: its batch failed, and it may be the reason
    lease: str | None = None
    backup: str | None = None  # the worker running a speculative second attempt
    not_before: float = 0.0
    merged: int = 0
    history: list[Attempt] = field(default_factory=list)
    story: Story = field(default_factory=new_story)

    def transition(self, new: ShardState, why: str) -> None:
        """The only way a shard changes state; a forbidden move raises with the shard's story."""
        what = f"shard {self.index} of job {self.job_id}"
        self.state = move(what, self.state, new, why, moves=SHARD_MOVES, story=self.story)

    def start_attempt(
        self, worker: str, *, now: float, backup: bool = False, above: int = 0
    ) -> int:
        """A new attempt on `worker` from `now`; returns its number: after every one known (a
        restored shard may have an attempt a worker re-reported, numbered as it was) and above
        `above` (the numbers an earlier master may have given it)."""
        number = max([above, *(a.number for a in self.history)]) + 1
        self.history.append(Attempt(number, worker, started=now, backup=backup))
        return number

    def close_attempt(
        self,
        now: float,
        outcome: str,
        err: ErrorInfo | None,
        *,
        worker: str | None = None,
        ran: float | None = None,
    ) -> Attempt | None:
        """End its latest open attempt (on `worker`, if named): that attempt, or None when none
        was open."""
        attempt = self.open_attempt(worker)
        if attempt is not None:
            attempt.ended = now
            attempt.outcome = outcome
            attempt.error = err
            attempt.ran = ran
        return attempt

    def open_attempt(self, worker: str | None = None) -> Attempt | None:
        """Its latest attempt still running (on `worker`, if named)."""
        for attempt in reversed(self.history):
            if attempt.ended is None and (worker is None or attempt.worker == worker):
                return attempt
        return None

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
    owner: str = ""  # the submitting client's public key (CURVE), for quotas and fair share
    turn: int = 0  # when it was last leased a shard (a count): equal shares take turns
    backups: int = 0  # speculative attempts running now (they hold slots too)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    duplicates: int = 0  # "duplicate" attempts in its stories (JobInfo.duplicates)
    resent: int = 0  # copies of merged executions' results that came again (JobInfo.resent)
    restarts: list[float] = field(default_factory=list)  # master starts while it ran (wall)
    # Attempt numbers: the highest given so far (committed as it rises), and the highest any
    # earlier master gave (restored), above which this one numbers the shards it runs again.
    attempts_given: int = 0
    attempts_before: int = 0
    ok_runs: int = 0  # shards run to success here, and their seconds: is it a short-shard job?
    ok_seconds: float = 0.0
    runs: list[float] = field(default_factory=list)  # each merged shard's run time (median)
    by_worker: dict[str, tuple[int, float]] = field(default_factory=dict)  # (runs, seconds)
    _median: tuple[int, float] = (0, 0.0)  # (len(runs) when computed, the median)
    declined_at: float | None = None  # since when a slow host leaves its shards to others
    batchable: bool = False
    attempts_failed: int = 0  # attempts charged against max_attempts, lost ones included
    retrying: int = 0  # shards with a failed attempt that have not ended yet
    lost_workers: list[str] = field(default_factory=list)  # workers that died holding a shard
    last_failure: str | None = None  # the latest failed attempt, as one line
    ready: collections.deque[int] = field(default_factory=collections.deque)
    counts: collections.Counter[ShardState] = field(default_factory=collections.Counter)
    story: Story = field(default_factory=new_story)

    def transition(self, new: JobState, why: str, *, now: float) -> None:
        """The only way a job changes state; the cause goes into its story."""
        self.state = move(
            f"job {self.job_id}", self.state, new, why, moves=JOB_MOVES, story=self.story
        )
        self.finished_at = now if self.finished_at is None else self.finished_at

    def move(self, shard: Shard, new: ShardState, why: str) -> None:
        """Transition a shard and keep the job's per-state counts true."""
        old = shard.state
        shard.transition(new, why)
        self.counts[old] -= 1
        self.counts[new] += 1
        if shard.charged and new in (ShardState.DONE, ShardState.FAILED):
            self.retrying = max(0, self.retrying - 1)

    def charge(self, shard: Shard, err: ErrorInfo, now: float) -> None:
        """A failed attempt that counts against max_attempts: it closes, and the job tallies it."""
        shard.charged += 1
        closed = shard.close_attempt(now, err.kind, err)
        worker = "?" if closed is None else closed.worker
        self.attempts_failed += 1
        self.retrying += shard.charged == 1
        if err.kind == "lost" and worker not in self.lost_workers:
            self.lost_workers.append(worker)
        what = f"{err.type}: {err.message}" if err.type else err.message or err.kind
        self.last_failure = (
            f"shard {shard.index} attempt {len(shard.history)} on {worker}: {err.kind}: {what}"
        )

    def requeue(self, shard: Shard, why: str, *, front: bool) -> None:
        """Back in the ready queue (first in line when `front`); a finished job queues nothing."""
        if self.finished:
            return
        self.move(shard, ShardState.QUEUED, why)
        if front:
            self.ready.appendleft(shard.index)
        else:
            self.ready.append(shard.index)

    def accept(
        self, shard: Shard, worker: str, attempt: int, duration: float, *, now: float, output: str
    ) -> None:
        """The shard's first result is in: its attempt closes and it is done (merged next).
        `now` is when it ended on the worker (a result resent after a restart ended earlier)."""
        closed = find(shard.history, worker, attempt)
        if closed is None:  # an execution it finished while no master was there to hear of it
            closed = Attempt(attempt, worker, now - duration, now, "ok (late)", ran=duration)
            shard.history.append(closed)
        elif closed.ended is not None:  # written off (lost, released), yet it ran: late
            closed.outcome, closed.error = "ok (late)", None
        else:
            closed.outcome = "ok"
        closed.ended, closed.ran = now, duration
        closed.output = output
        while shard.close_attempt(now, "superseded", None):
            pass  # a re-run still in flight elsewhere: its result will be a counted duplicate
        if shard.state is ShardState.QUEUED:
            self.ready.remove(shard.index)
        elif shard.state is ShardState.WAITING:
            shard.not_before = float("inf")  # its heap entry goes stale
        self.move(shard, ShardState.DONE, f"result from {worker}")
        shard.merged += 1

    def leased_to(self, shard: Shard, worker: str) -> bool:
        """Whether `worker` runs this shard of an unfinished job now."""
        return shard.state is ShardState.LEASED and shard.lease == worker and not self.finished

    @property
    def finished(self) -> bool:
        return self.state is not JobState.RUNNING

    @property
    def median_run(self) -> float:
        """Seconds a shard of it ran, the median over its merged shards (0 before any). It
        sorts every run: past 64 runs it is taken again only when they grew by 5 %."""
        n, last = len(self.runs), self._median[0]
        if n != last and (last < 64 or n >= last * 1.05):
            self._median = (n, statistics.median(self.runs) if self.runs else 0.0)
        return self._median[1]

    def record_run(self, worker: str, seconds: float, shards: int = 1) -> None:
        """`shards` merged shards that ran `seconds` in all on `worker`: the medians and
        per-worker averages straggler backups measure against."""
        self.runs.extend([seconds / shards] * shards)
        n, total = self.by_worker.get(worker, (0, 0.0))
        self.by_worker[worker] = (n + shards, total + seconds)

    def slow_on(self, worker: str, factor: float) -> bool:
        """Whether `worker`'s merged shards of this job took `factor` times the median or
        more, on average: a slow host, whose running shard is a straggler from its start."""
        n, seconds = self.by_worker.get(worker, (0, 0.0))
        return n > 0 and seconds >= factor * self.median_run * n

    def excess_on(self, worker: str) -> float:
        """Seconds `worker`'s merged shards of this job took over the median, on average."""
        n, seconds = self.by_worker.get(worker, (0, 0.0))
        return seconds / n - self.median_run if n else 0.0

    @property
    def mean_run(self) -> float:
        """Seconds its shards ran on a worker, on average (0 before the first success)."""
        return self.ok_seconds / self.ok_runs if self.ok_runs else 0.0

    def prefetches(self, below: float) -> bool:
        """Whether its shards may queue on a worker behind a running one: only once they are
        known to be short (mean below `below` seconds), where a round trip per shard is a real
        cost and a shard queued behind another can delay the job's end by little."""
        return self.ok_runs > 0 and self.ok_seconds < below * self.ok_runs

    def info(self, *, offset: float, shards: bool = False) -> JobInfo:
        """As users read it, times in wall-clock seconds (`offset` added to the master's)."""
        return JobInfo(
            job_id=self.job_id,
            name=self.spec.name,
            owner=self.owner,
            op=self.spec.op,
            state=str(self.state),
            shards_total=len(self.shards),
            shards_done=self.counts[ShardState.DONE],
            shards_failed=self.counts[ShardState.FAILED],
            shards_running=self.counts[ShardState.LEASED],
            submitted_at=self.submitted_at + offset,
            started_at=None if self.started_at is None else self.started_at + offset,
            finished_at=None if self.finished_at is None else self.finished_at + offset,
            error=self.error,
            duplicates=self.duplicates,
            resent=self.resent,
            restarts=list(self.restarts),
            attempts_failed=self.attempts_failed,
            shards_retrying=self.retrying,
            lost_workers=list(self.lost_workers),
            last_failure=self.last_failure,
            missing_shards=[s.index for s in self.shards if s.state is ShardState.FAILED],
            shards=[s.info(history=True, offset=offset) for s in self.shards] if shards else None,
        )


Key = tuple[str, int]  # (job, shard); a task is named by its first shard's key


class Leases:
    """What one worker holds: each leased shard's task, and the tasks in the order it got them
    (it runs them first come, first served: the oldest `slots` are executing). A batch is one
    task of several shards. Kept counted, so asking how many tasks it holds costs no scan."""

    def __init__(self, worker_id: str, room: set[str]) -> None:
        self.worker_id = worker_id
        self._task: dict[Key, Key] = {}
        self._size: dict[Key, int] = {}  # task -> its shards still held, oldest task first
        self._room = room  # the roster's: workers whose room may have grown

    def add(self, key: Key, task: Key) -> None:
        if key in self._task:
            self.drop(key)
        self._task[key] = task
        self._size[task] = self._size.get(task, 0) + 1

    def drop(self, key: Key) -> None:
        task = self._task.pop(key, None)
        if task is None:
            return
        left = self._size[task] - 1
        if left:
            self._size[task] = left
        else:
            del self._size[task]
        self._room.add(self.worker_id)

    def task_of(self, key: Key) -> Key:
        return self._task[key]

    def batched(self, key: Key) -> bool:
        """Whether the shard went in a task with others."""
        return self._size[self._task[key]] > 1

    def __iter__(self) -> Iterator[Key]:
        return iter(self._task)

    def executing(self, slots: int) -> list[Key]:
        """The tasks it is running now: its oldest `slots`."""
        return list(itertools.islice(self._size, slots))

    @property
    def held(self) -> int:
        """Tasks it holds."""
        return len(self._size)

    def __len__(self) -> int:
        return len(self._task)

    def __contains__(self, key: object) -> bool:
        return key in self._task


@dataclass
class Worker:
    worker_id: str
    slots: int
    last_seen: float
    leases: Leases
    prefetch: int = 0  # the most it queues beyond its slots (its own cap)
    rtt: float | None = None  # seconds: the master's ping to its echo, smoothed
    window: int = 0  # the queue last allowed to it (shown by `workers`)
    draining: bool = False
    done: int = 0
    failed: int = 0

    def observe_rtt(self, sample: float) -> None:
        """A ping's round trip; smoothed, with a rise taken at once (a queue must cover it)."""
        if sample >= 0:
            old = self.rtt
            self.rtt = sample if old is None or sample > old else old + (sample - old) / 8

    def queue_window(self, mean_run: float) -> int:
        """Shards to queue beyond its slots for a job whose shards run `mean_run` seconds: enough
        that each slot has a round trip's worth waiting (the bandwidth-delay product), at least
        one per slot, at most its own cap. Short shards stream; the queue never holds more than
        about one round trip of work, so long ones are not hoarded."""
        floor = min(self.slots, self.prefetch)
        per_task = max(mean_run, MIN_TASK_SECONDS)  # the agent's own cost per task, at least
        need = min(float(self.prefetch), self.slots * (self.rtt or 0.0) / per_task)
        return min(self.prefetch, max(floor, math.ceil(need)))

    def credits(self, queue: int) -> int:
        """Tasks it may be sent now: free slots, plus `queue` shards waiting behind them."""
        if self.draining:
            return 0
        return max(0, self.slots + queue - self.leases.held)
