"""W5: a 32-shard job with and without a SIGKILLed task process, and worker-agent recovery."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass

from bench_context import Bench
from bench_data import Dataset
from bench_harness import (
    HANGS,
    JOB_TIMEOUT,
    POOL,
    SHARDMILL,
    Metric,
    Target,
    interleaved,
    new_cluster,
)
from bench_systems import ShardmillSystem, System

from shardmill.errors import JobTimeout
from shardmill.job import Job

WATCH_STEP = 0.01  # status polls while waiting for a dead agent's shards to move
HEARTBEATS = ((1.0, 3), (0.1, 3))  # the defaults, then a tighter setting


@dataclass(frozen=True)
class Slow:
    """The W5 job: stats of each row range plus `extra` seconds of sleep."""

    ds: Dataset
    ranges: list[tuple[int, int]]
    extra: float
    kill_after: float

    def run(self, system: System) -> float:
        t0 = time.perf_counter()
        stats = system.start_slow_stats(str(self.ds.path), self.ranges, self.extra)(JOB_TIMEOUT)
        seconds = time.perf_counter() - t0
        self.ds.check(stats, f"{system.name} W5")
        return seconds

    def run_with_kill(self, system: System, timeout: float) -> float | None:
        """Seconds to the right answer with one task process SIGKILLed; None if it hangs."""
        t0 = time.perf_counter()
        wait = system.start_slow_stats(str(self.ds.path), self.ranges, self.extra)
        time.sleep(max(0.0, t0 + self.kill_after - time.perf_counter()))
        os.kill(system.victim_pid(), signal.SIGKILL)
        try:
            stats = wait(timeout)
        except (multiprocessing.TimeoutError, JobTimeout):
            return None
        seconds = time.perf_counter() - t0
        self.ds.check(stats, f"{system.name} W5 with a killed process")
        return seconds


def w5_fault(b: Bench) -> list[Metric]:
    s = b.sizes
    slow = Slow(b.dataset, b.dataset.ranges(s.shards), s.fault_extra, s.fault_kill_after)
    label = f"{s.shards} shards x (stats + {s.fault_extra} s sleep)"
    clean = Metric("W5-clean", f"fault: {label}, no fault", "s", False)
    fault = Metric(
        "W5-kill", f"fault: same, a task process SIGKILLed {s.fault_kill_after:g} s in", "s", False
    )
    ratio = Metric(
        "W5-ratio", "fault: killed / no-fault time", "x", False, target=Target("<=", 1.15)
    )
    system = ShardmillSystem(new_cluster().start())
    try:
        for name, samples in interleaved(
            [system, b.pool], b.heavy_reps, slow.run, before=b.settle
        ).items():
            clean.add(name, samples)
        killed, retries = [], []
        for _ in range(b.heavy_reps):
            b.settle()
            seconds = slow.run_with_kill(system, JOB_TIMEOUT)
            assert seconds is not None, "shardmill did not finish after a child was killed"
            killed.append(seconds)
            retries.append(_retries(system.last_job))
    finally:
        system.close()
    fault.add(SHARDMILL, killed).extra["retried_shards"] = retries
    ratio.values[SHARDMILL] = float(fault.values[SHARDMILL]) / float(clean.values[SHARDMILL])
    _pool_hangs(b, slow, clean, fault, ratio)
    for other in b.others:  # Dask and Ray, when installed
        try:
            _other_fault(b, slow, other, clean, fault, ratio)
        except Exception as e:  # one system's failure must not hide the others' numbers
            fault.note = f"{other.name}: {type(e).__name__}: {e}"
    return [clean, fault, ratio, *agent_kills(b, slow)]


def _other_fault(
    b: Bench, slow: Slow, system: System, clean: Metric, fault: Metric, ratio: Metric
) -> None:
    """W5 for Dask or Ray: the same job clean, then with a task process SIGKILLed."""
    cleans, kills = [], []
    for _ in range(b.heavy_reps):
        b.settle()
        cleans.append(slow.run(system))
    for _ in range(b.heavy_reps):
        b.settle()
        kills.append(slow.run_with_kill(system, JOB_TIMEOUT))
    clean.add(system.name, cleans)
    if any(k is None for k in kills):
        fault.values[system.name] = ratio.values[system.name] = HANGS
        return
    fault.add(system.name, [k for k in kills if k is not None])
    ratio.values[system.name] = float(fault.values[system.name]) / float(clean.values[system.name])


def _retries(job: Job | None) -> int:
    assert job is not None
    shards = job.status(shards=True).shards or []
    return sum(sh.attempts for sh in shards) - len(shards)


def _pool_hangs(b: Bench, slow: Slow, clean: Metric, fault: Metric, ratio: Metric) -> None:
    """multiprocessing.Pool loses the task of a killed worker: its result never comes."""
    timeout = max(10.0, 3 * float(clean.values[POOL]))
    b.settle()
    seconds = slow.run_with_kill(b.pool, timeout)
    b.pool.restart()
    if seconds is None:
        fault.values[POOL] = ratio.values[POOL] = HANGS
        fault.note = f"Pool: result.get(timeout={timeout:.0f}) raised TimeoutError"
    else:
        fault.add(POOL, [seconds])
        ratio.values[POOL] = seconds / float(clean.values[POOL])
    fault.extra["pool_timeout_s"] = timeout


def agent_kills(b: Bench, slow: Slow) -> list[Metric]:
    """SIGKILL a worker agent mid-job: how long until its shard is requeued, and re-run."""
    metrics = []
    for interval, liveness in HEARTBEATS:
        hb = f"heartbeat {interval:g} s x {liveness}"
        requeued = Metric(
            f"W5-agent-requeued-{interval:g}",
            f"fault: agent SIGKILL -> its shard requeued ({hb})",
            "s",
            False,
        )
        moved = Metric(
            f"W5-agent-elsewhere-{interval:g}",
            f"fault: agent SIGKILL -> its shard running elsewhere ({hb})",
            "s",
            False,
        )
        runs = []
        for _ in range(b.heavy_reps):
            b.settle()
            runs.append(_agent_kill(slow, interval, liveness))
        requeued.add(SHARDMILL, [r.requeued for r in runs])
        moved.add(SHARDMILL, [r.elsewhere for r in runs])
        moved.extra["job_seconds"] = [r.total for r in runs]
        metrics += [requeued, moved]
    return metrics


@dataclass(frozen=True)
class AgentKill:
    requeued: float
    elsewhere: float
    total: float


def _agent_kill(slow: Slow, interval: float, liveness: int) -> AgentKill:
    cluster = new_cluster(heartbeat_interval=interval, heartbeat_liveness=liveness)
    system = ShardmillSystem(cluster.start())
    try:
        system.map_noop(1000)  # both children up before the clock starts
        t0 = time.perf_counter()
        wait = system.start_slow_stats(str(slow.ds.path), slow.ranges, slow.extra)
        job = system.last_job
        assert job is not None
        time.sleep(max(0.0, t0 + slow.kill_after - time.perf_counter()))
        victim = system.client.workers()[0]
        shards = job.status(shards=True).shards or []
        mine = [sh for sh in shards if sh.state == "leased" and sh.worker == victim.worker_id]
        held = {sh.index: sh.attempts for sh in mine}
        os.kill(victim.pid, signal.SIGKILL)
        t_kill = time.perf_counter()
        requeued, elsewhere = _watch(job, held, t_kill, timeout=10 * interval * liveness + 10)
        stats = wait(JOB_TIMEOUT)
        total = time.perf_counter() - t0
        slow.ds.check(stats, "shardmill W5 with a killed agent")
    finally:
        system.close()
    return AgentKill(requeued, elsewhere, total)


def _watch(job: Job, held: dict[int, int], t_kill: float, timeout: float) -> tuple[float, float]:
    """Seconds after the kill until every held shard left the dead worker, and was re-leased.

    `held` maps each shard the dead worker held to its attempt count at the kill: a requeued
    shard is back in the queue (or already re-leased), a re-leased one has a new attempt.
    """
    requeued = elsewhere = math.nan
    while held and math.isnan(elsewhere) and time.perf_counter() - t_kill < timeout:
        shards = {sh.index: sh for sh in job.status(shards=True).shards or []}
        now = time.perf_counter() - t_kill
        releases = [shards[i].attempts > n for i, n in held.items()]
        queued = [shards[i].state in ("queued", "waiting") for i in held]
        if math.isnan(requeued) and all(r or q for r, q in zip(releases, queued, strict=True)):
            requeued = now
        if all(releases):
            elsewhere = now
        time.sleep(WATCH_STEP)
    return requeued, elsewhere
