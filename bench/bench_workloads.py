"""W1-W4 and the per-shard overhead curve, run side by side on every system."""

from __future__ import annotations

import statistics
import time

import numpy as np
from bench_context import Bench
from bench_data import WrongResult
from bench_harness import SHARDMILL, Metric, Target, cpu_seconds, interleaved, timed, vm_hwm_mib
from bench_systems import System


def w1_throughput(b: Bench) -> list[Metric]:
    n = b.sizes.w1_tasks
    metric = Metric(
        "W1", f"throughput: map a no-op over {n:,} tasks, auto-chunked", "tasks/s", True
    )
    b.measure(metric, lambda system: _map_rate(system, n, each=False))
    return [metric, *_w1_each(b, n)]


def _map_rate(system: System, n: int, *, each: bool) -> float:
    """Tasks per second of a map of `n` no-ops (one task per message with `each`), checked."""
    t0 = time.perf_counter()
    got = system.map_noop_each(n) if each else system.map_noop(n)
    seconds = time.perf_counter() - t0
    if got != list(range(n)):
        raise WrongResult(f"{system.name}: map of {n} no-ops returned wrong values")
    return n / seconds


def _w1_each(b: Bench, n: int) -> list[Metric]:
    """W1 with one task per message (shardmill chunk_size=1, Pool chunksize=1, Dask
    client.map, Ray .remote()), and the master's CPU per task while shardmill runs it."""
    master = b.shardmill.cluster.master
    assert master is not None
    cpu: list[float] = []

    def run(system: System) -> float:
        before = cpu_seconds(master.pid)
        rate = _map_rate(system, n, each=True)
        if system.name == SHARDMILL:
            cpu.append((cpu_seconds(master.pid) - before) / n * 1e6)
        return rate

    each = Metric(
        "W1-each",
        f"throughput: {n:,} no-op tasks, one per message",
        "tasks/s",
        True,
        target=Target(">=", 1e4),
    )
    b.measure(each, run)
    master_cpu = Metric(
        "W1-master-cpu", "throughput, one per message: master CPU per task", "µs", False
    )
    master_cpu.target = Target("<=", 50)
    return [each, master_cpu.add(SHARDMILL, cpu[1:])]  # without the warm-up


def w2_latency(b: Bench) -> list[Metric]:
    calls = b.sizes.w2_calls
    pooled: dict[str, list[float]] = {}

    def run(system: System) -> float:
        system.forget_jobs()
        lat = []
        for _ in range(calls):
            t0 = time.perf_counter()
            system.call_noop()
            lat.append((time.perf_counter() - t0) * 1000)
        pooled.setdefault(system.name, []).extend(lat)
        return statistics.median(lat)

    metric = Metric(
        "W2",
        f"latency: median of {calls} sequential no-op calls",
        "ms",
        False,
        target=Target("<=", 0.5),
    )
    p99 = Metric("W2-p99", f"latency: p99 of {calls} sequential no-op calls", "ms", False)
    p99.target = Target("<=", 1.5)
    for name, samples in interleaved(b.systems(), b.reps, run, before=b.settle).items():
        metric.add(name, samples)
        lat = np.asarray(pooled[name][calls:])  # without the warm-up repetition
        metric.extra[name] = {f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 99)}
        reps = [lat[i : i + calls] for i in range(0, len(lat), calls)]
        p99.add(name, [float(np.percentile(r, 99)) for r in reps])
    metric.note = "finished jobs pruned before each repetition: see the what-if `jobs`"
    return [metric, p99]


def w3_by_reference(b: Bench) -> list[Metric]:
    ds, shards = b.dataset, b.sizes.shards
    ranges = ds.ranges(shards)

    def run(system: System) -> float:
        t0 = time.perf_counter()
        stats = system.stats_by_reference(str(ds.path), ranges)
        seconds = time.perf_counter() - t0
        ds.check(stats, f"{system.name} W3")
        return seconds

    metric = Metric(
        "W3",
        f"column_stats by reference: {ds.rows:,} x {ds.cols} .npy "
        f"({ds.nbytes / 1e9:.2f} GB), {shards} shards",
        "s",
        False,
        target=Target("<=", 1.10, "pool"),
    )
    return [b.measure(metric, run)]


def w4_by_value(b: Bench) -> list[Metric]:
    ds, shards = b.dataset, b.sizes.shards
    data = np.load(ds.path)  # in the client's memory: this is what travels by value
    ranges = ds.ranges(shards)
    blocks = [data[a:c] for a, c in ranges]

    def run_map(system: System) -> float:
        seconds = timed(lambda: ds.check(system.stats_by_value(blocks), f"{system.name} W4"))
        return data.nbytes / 1e9 / seconds

    def run_submit(system: System) -> float:
        seconds = timed(lambda: ds.check(system.stats_of_array(data, ranges), system.name))
        return data.nbytes / 1e9 / seconds

    metric = Metric(
        "W4",
        f"by value: client.map over {shards} row blocks of the W3 data (Pool: pool.map)",
        "GB/s",
        True,
        target=Target(">=", 1.5),
    )
    b.measure(metric, run_map)
    master = b.shardmill.cluster.master
    assert master is not None
    metric.extra["master_vmhwm_mib_after"] = vm_hwm_mib(master.pid)
    if not b.shardmill.can_submit_arrays():
        return [metric]
    submit = Metric(
        "W4-submit",
        f'by value: client.submit("column_stats", array, shards={shards}) (Pool: pool.map)',
        "GB/s",
        True,
        target=Target(">=", 1.5),
    )
    return [metric, b.measure(submit, run_submit)]


def shard_curve(b: Bench) -> list[Metric]:
    ds = b.dataset
    metrics = []
    for shards in b.sizes.curve_shards:
        ranges = ds.ranges(shards)

        def run(system: System, ranges: list[tuple[int, int]] = ranges) -> float:
            t0 = time.perf_counter()
            stats = system.stats_by_reference(str(ds.path), ranges)
            seconds = time.perf_counter() - t0
            ds.check(stats, f"{system.name} curve at {len(ranges)} shards")
            return seconds

        metric = Metric(
            f"curve-{shards}", f"curve: column_stats, {ds.rows:,} rows, {shards} shards", "s", False
        )
        metrics.append(b.measure(metric, run))
    return [*metrics, _overhead(metrics, b.sizes.curve_shards)]


def _overhead(curve: list[Metric], shards: tuple[int, ...]) -> Metric:
    """Wall time each extra shard costs: the least-squares slope over the points >= 32 shards."""
    points = [(n, m) for n, m in zip(shards, curve, strict=True) if n >= 32]
    metric = Metric(
        "curve-per-shard",
        f"curve: wall time per extra shard (slope over {', '.join(str(n) for n, _ in points)})",
        "ms",
        False,
        note="2 executors in parallel: the cost per shard on one executor is about twice this",
    )
    if len(points) < 2:
        metric.note = "needs at least two shard counts >= 32"
        return metric
    for name in curve[0].values:
        xs = [float(n) for n, _ in points]
        ys = [float(m.values[name]) for _, m in points]
        metric.values[name] = float(np.polyfit(xs, ys, 1)[0]) * 1000
    return metric
