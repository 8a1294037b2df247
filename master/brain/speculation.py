"""Speculative backups: a shard running far longer than its job's median (or for one median
on a worker whose shards of the job took that long) gets a second attempt on an idle worker;
the first result is merged, the other attempt is cancelled, uncharged.

Exactly-once merge makes this safe (a late second result is a counted duplicate). Only when a
worker has a free slot, only for jobs with a few merged shards to take a median from, never
for a batch, and never twice for one shard. Pure: decisions on the brain's records and time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shardmill.master.brain.model import Job, Shard, Timing, Worker
from shardmill.master.brain.transitions import ShardState

MIN_RUNS = 3  # merged shards before a job's median means anything


@dataclass
class Plan:
    backups: list[tuple[Job, Shard, Worker]]  # start now: (job, shard, the idle worker)
    due: float | None  # when the next running shard becomes slow enough, if any


def plan_backups(
    active: dict[str, Job],
    workers: dict[str, Worker],
    idle: dict[str, int],
    timing: Timing,
    now: float,
) -> Plan:
    """Backups onto the `idle` workers (free slots by worker), longest running shard first."""
    free = dict(idle)
    slow, due = _stragglers(active, workers, timing, now)
    backups = []
    for _, job, shard, holder in sorted(slow, key=lambda s: s[0]):  # the longest running first
        # Most room first; a worker known slow for the job only if no other is idle.
        order = sorted(free, key=lambda w: (known_slow(job, w, timing), -free[w]))
        target = next((w for w in order if w != holder), None)
        if target is None:
            continue
        backups.append((job, shard, workers[target]))
        free[target] -= 1
        if not free[target]:
            del free[target]
    return Plan(backups, due)


def _stragglers(
    active: dict[str, Job], workers: dict[str, Worker], timing: Timing, now: float
) -> tuple[list[tuple[float, Job, Shard, str]], float | None]:
    """Executing shards past their job's threshold (with their start and worker), and the
    time the next one will be."""
    slow: list[tuple[float, Job, Shard, str]] = []
    due: float | None = None
    for w in workers.values():
        for key in w.leases.executing(w.slots):
            job = active.get(key[0])
            if job is None or job.finished or not speculates(job, timing):
                continue
            shard = job.shards[key[1]]
            if not _alone_on(shard, w, key):
                continue
            attempt = shard.open_attempt(w.worker_id)
            if attempt is None:
                continue
            at = attempt.started + wait_before_backup(job, w.worker_id, timing)
            if at <= now:
                slow.append((attempt.started, job, shard, w.worker_id))
            elif due is None or at < due:
                due = at
    return slow, due


def known_slow(job: Job, worker: str, timing: Timing) -> bool:
    """Whether `worker` is a slow host for `job` (not noise): its merged shards of the job took
    `speculate_after` x the median and `speculate_min_age` or more over it, on average."""
    n, seconds = job.by_worker.get(worker, (0, 0.0))
    if not n or seconds < timing.speculate_min_age * n or not speculates(job, timing):
        return False  # decided without the median (it sorts every run after each result)
    return job.slow_on(worker, _factor(job, timing)) and (
        job.excess_on(worker) >= timing.speculate_min_age
    )


class SlowHosts:
    """Which workers leave a job's next shard to the others, for one dispatch at `now`.

    A worker known slow for a job (`known_slow`) leaves it to the workers that are not, when
    they would run all of the job's ready shards before it ran that one: their slots running
    the job or free now, at the median, against its own average. Otherwise a slow host takes
    one of a job's last shards, and the job's end waits for it or for its backup. It takes the
    shard after all when no such slot exists (someone must), or once it has left the job's
    shards to others for as long as it would take to run one and no shard of the job was
    leased meanwhile (the others are stuck: a hung shard, another job's long ones)."""

    def __init__(self, workers: Mapping[str, Worker], timing: Timing, now: float) -> None:
        self.workers, self.timing, self.now = workers, timing, now
        self._others: dict[str, int] = {}  # by job: counted once per dispatch

    def leaves(self, job: Job, worker: Worker) -> bool:
        if not known_slow(job, worker.worker_id, self.timing):
            return False  # the common case: the other workers are not looked at
        others = self._others.get(job.job_id)
        if others is None:
            free = sum(
                w.credits(0)
                for w in self.workers.values()
                if not known_slow(job, w.worker_id, self.timing)
            )
            others = self._others[job.job_id] = free + job.counts[ShardState.LEASED]
        own = job.median_run + job.excess_on(worker.worker_id)
        if others <= 0 or own <= len(job.ready) * job.median_run / others:
            return False
        if job.declined_at is None:
            job.declined_at = self.now
        return self.now - job.declined_at < own


def wait_before_backup(job: Job, worker: str, timing: Timing) -> float:
    """How long a shard runs on `worker` before it is a straggler. Anywhere: `factor` x the
    job's median, and at least `min_age` (noise in short shards is not a straggler). On a
    worker whose shards of this job took `factor` x the median: `min_age`. And on a slow host
    (`known_slow`: `min_age` or more over the median besides): one median, if shorter: a
    fresh run started then ends first, and otherwise the slow host's last shard of a job
    holds the job's end for `min_age` more."""
    factor, min_age = _factor(job, timing), timing.speculate_min_age
    if known_slow(job, worker, timing):
        return min(min_age, job.median_run)
    if job.slow_on(worker, factor):
        return min_age
    return max(min_age, factor * job.median_run)


def _alone_on(shard: Shard, w: Worker, key: tuple[str, int]) -> bool:
    """Whether `w` runs the shard's only attempt, and not in a batch."""
    if shard.backup is not None or shard.lease != w.worker_id:
        return False
    return shard.state is ShardState.LEASED and not w.leases.batched(key)


def _factor(job: Job, timing: Timing) -> float:
    return timing.speculate_after if job.spec.speculate_after is None else job.spec.speculate_after


def speculates(job: Job, timing: Timing) -> bool:
    return _factor(job, timing) > 0 and len(job.runs) >= MIN_RUNS
