"""Start-up time and the 1,000,000-task scale run: each on fresh processes."""

from __future__ import annotations

import json
import multiprocessing
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_cold import cold
from bench_context import Bench
from bench_data import WrongResult
from bench_harness import (
    JOB_TIMEOUT,
    POOL,
    SHARDMILL,
    WORKERS,
    Metric,
    Target,
    cluster_env,
    interleaved,
    new_cluster,
    vm_hwm_mib,
)
from bench_systems import ShardmillSystem, System, available_optional
from bench_tasks import noop


def startup(b: Bench) -> list[Metric]:
    ready = Metric(
        "startup",
        f"start-up: LocalCluster(workers={WORKERS}) ready / Pool({WORKERS}) constructed",
        "s",
        False,
        target=Target("<=", 1.0),
    )
    first = Metric(
        "startup-first-call", "start-up: ready and a first no-op call answered", "s", False
    )
    sm, pool = [], []
    for _ in range(b.reps + 1):
        b.settle()
        sm.append(_cluster_start())
        pool.append(_pool_start())
    sm, pool = sm[1:], pool[1:]  # the first start warms the file cache
    ready.add(SHARDMILL, [r for r, _ in sm]).add(POOL, [r for r, _ in pool])
    first.add(SHARDMILL, [f for _, f in sm]).add(POOL, [f for _, f in pool])
    for name in available_optional():
        runs = [_other_start(b, name) for _ in range(b.reps + 1)][1:]
        label = runs[0]["name"]
        ready.add(label, [r["ready"] for r in runs])
        first.add(label, [r["first"] for r in runs])
    return [ready, first]


def cold_start(b: Bench) -> list[Metric]:
    """Import + LocalCluster(workers=2) + a first map answered, in a fresh process each time
    (bench_cold.py), every system in turn; the first round warms the file cache."""
    names = {SHARDMILL: "shardmill", POOL: "pool"}
    names.update({n.title(): n for n in available_optional()})
    rounds: dict[str, list[dict[str, float]]] = {label: [] for label in names}
    for _ in range(b.reps + 1):
        for label, name in names.items():
            b.settle()
            rounds[label].append(cold(name, cluster_env()))
    total = Metric(
        "cold",
        "cold start: a fresh process imports, starts 2 workers, first map of 10 answered",
        "s",
        False,
        target=Target("<=", 1.0),
        note="wall from spawning the process; Dask's in the same run is the bar to beat",
    )
    parts = {}
    for label, runs in rounds.items():
        runs = runs[1:]
        total.add(label, [r["answered"] for r in runs])
        parts[label] = {
            step: statistics.median(r[step] - r[prev] for r in runs)
            for prev, step in (("start", "imported"), ("imported", "ready"), ("ready", "answered"))
        }
        parts[label]["interpreter"] = statistics.median(r["start"] for r in runs)
    total.extra["split"] = parts
    return [total]


def _other_start(b: Bench, name: str) -> dict[str, Any]:
    """A cold start of Dask or Ray, in a process of its own (Ray allows one per process)."""
    b.settle()
    script = Path(__file__).with_name("bench_others.py")
    out = subprocess.run(
        [sys.executable, str(script), "startup", name],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _cluster_start() -> tuple[float, float]:
    cluster = new_cluster()
    t0 = time.perf_counter()
    cluster.start()
    try:
        ready = time.perf_counter() - t0
        with cluster.client() as client:
            client.call("bench_tasks:noop", timeout=JOB_TIMEOUT)
        return ready, time.perf_counter() - t0
    finally:
        cluster.stop()


def _pool_start() -> tuple[float, float]:
    t0 = time.perf_counter()
    pool = multiprocessing.Pool(WORKERS)
    try:
        ready = time.perf_counter() - t0
        pool.apply(noop)
        return ready, time.perf_counter() - t0
    finally:
        pool.terminate()
        pool.join()


def scale(b: Bench) -> list[Metric]:
    n = b.sizes.scale_tasks
    expected = list(range(n))
    pool = b.pool
    system = ShardmillSystem(new_cluster().start())  # fresh, so VmHWM is this run's alone

    def run(s: System) -> float:
        t0 = time.perf_counter()
        got = s.map_noop(n)
        seconds = time.perf_counter() - t0
        if got != expected:
            raise WrongResult(f"{s.name}: map of {n:,} no-ops returned wrong values")
        return n / seconds

    try:
        system.map_noop(b.sizes.w1_tasks)  # children warm, as in W1
        samples = interleaved([system, pool], b.heavy_reps, run, warmup=0, before=b.settle)
        master = system.cluster.master
        assert master is not None
        hwm = vm_hwm_mib(master.pid)
        agents = [vm_hwm_mib(p.pid) for p in system.cluster.workers]
    finally:
        system.close()
    thr = Metric(
        "scale",
        f"scale: map a no-op over {n:,} tasks",
        "tasks/s",
        True,
        target=Target(">=", 0.8, "W1"),
    )
    for name, values in samples.items():
        thr.add(name, values)
    rss = Metric(
        "scale-rss",
        f"scale: master peak RSS (VmHWM) after {len(samples[SHARDMILL])} x {n:,} tasks",
        "MiB",
        False,
        target=Target("<=", 1024),
        extra={"agents_vmhwm_mib": agents},
    )
    rss.values[SHARDMILL] = hwm
    return [thr, rss]
