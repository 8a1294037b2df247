"""`shardmill demo`: generate a dataset, run column_stats on a local cluster, check it."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.console import Console
from rich.table import Table

from shardmill import exitcodes
from shardmill.local import LocalCluster
from shardmill.ops.column_stats import ColumnStats

CHUNK_ROWS = 1_000_000
WARM_RUNS = 3
T = TypeVar("T")


def generate(path: Path, rows: int, cols: int, seed: int = 0) -> None:
    """Write a rows x cols float64 .npy in chunks, so memory stays flat for any size."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(rows, cols))
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(rows, start + CHUNK_ROWS)
        out[start:stop] = rng.normal(
            loc=np.arange(cols), scale=1 + np.arange(cols), size=(stop - start, cols)
        )
    out.flush()
    del out


def one_process(path: Path) -> dict[str, Any]:
    """The same statistics in one process, chunk by chunk: the baseline for the speedup."""
    data = np.load(path, mmap_mode="r")
    op = ColumnStats()
    acc: dict[str, Any] = {"count": 0}
    for start in range(0, data.shape[0], CHUNK_ROWS):
        acc = op.combine(acc, op.run(data[start : start + CHUNK_ROWS]))
    return op.finalize(acc)


@dataclass
class Timings:
    """Seconds for each step of the demo."""

    cluster_start: float
    first_job: float  # on cold workers: each child's first import and memory map
    shardmill: float  # the same job again, warm: what a long-running cluster sees
    one_process: float


def run_demo(
    *, rows: int, cols: int, shards: int, workers: int, directory: str | None, as_json: bool
) -> int:
    console = Console(stderr=as_json)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = Path(tmp) / "demo.npy"
        t0 = time.perf_counter()
        generate(path, rows, cols)
        console.print(
            f"generated {rows:,} x {cols} float64 ({path.stat().st_size / 1e6:.0f} MB) "
            f"in {time.perf_counter() - t0:.2f} s"
        )
        stats, single, times = _run(path, shards=shards, workers=workers, console=console)
        errors = _errors(path, stats)
    ok = all(e <= 1e-9 for e in errors.values()) and stats["count"] == rows
    report = {
        "rows": rows,
        "cols": cols,
        "shards": shards,
        "workers": workers,
        "cluster_start_s": times.cluster_start,
        "first_job_s": times.first_job,
        "shardmill_s": times.shardmill,
        "one_process_s": times.one_process,
        "speedup": times.one_process / times.shardmill,
        "max_rel_error": errors,
        "matches_numpy": ok,
        "single_matches": bool(np.allclose(single["mean"], stats["mean"])),
    }
    if as_json:
        print(json.dumps(report))
    else:
        _print_report(console, times, workers=workers, shards=shards, errors=errors, ok=ok)
    return exitcodes.OK if ok else exitcodes.CHECK_FAILED


def _run(
    path: Path, *, shards: int, workers: int, console: Console
) -> tuple[dict[str, Any], dict[str, Any], Timings]:
    """column_stats on a local cluster, cold then warm, and in one process for the baseline."""
    t0 = time.perf_counter()
    with LocalCluster(workers=workers) as cluster:
        start_s = time.perf_counter() - t0
        console.print(f"local cluster: master + {workers} workers ready in {start_s:.2f} s")
        with cluster.client() as client:

            def job() -> dict[str, Any]:
                stats: dict[str, Any] = client.submit("column_stats", path, shards=shards).result(
                    timeout=600
                )
                return stats

            cold_s, _ = _timed(job)
            # Warm runs, what a long-running cluster sees: the median of a few, since one run
            # on a small shared VM swings with whatever else the machine is doing.
            dist_s, stats = _median_of(WARM_RUNS, job)
    one_process(path)  # the same warm page cache for the baseline
    single_s, single = _median_of(WARM_RUNS, lambda: one_process(path))
    return stats, single, Timings(start_s, cold_s, dist_s, single_s)


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def _median_of(n: int, fn: Callable[[], T]) -> tuple[float, T]:
    """The median time of `n` runs, and the last run's value."""
    runs = [_timed(fn) for _ in range(n)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def _errors(path: Path, stats: dict[str, Any]) -> dict[str, float]:
    """Largest relative error of each statistic against NumPy's own."""
    data = np.load(path, mmap_mode="r")
    ref = {
        "mean": data.mean(axis=0),
        "std": data.std(axis=0),
        "min": data.min(axis=0),
        "max": data.max(axis=0),
    }
    return {
        k: float(np.max(np.abs(stats[k] - v) / np.maximum(1.0, np.abs(v)))) for k, v in ref.items()
    }


def _print_report(
    console: Console,
    times: Timings,
    *,
    workers: int,
    shards: int,
    errors: dict[str, float],
    ok: bool,
) -> None:
    table = Table("", "seconds")
    warm = f"median of {WARM_RUNS} warm runs"
    table.add_row(
        f"shardmill, {workers} workers, {shards} shards ({warm})", f"{times.shardmill:.3f}"
    )
    table.add_row("one process, same statistics (median of 3)", f"{times.one_process:.3f}")
    table.add_row("speedup (warm)", f"{times.one_process / times.shardmill:.2f}x")
    table.add_row("the first job, on cold workers (not in the speedup)", f"{times.first_job:.3f}")
    console.print(table)
    verdict = "[green]matches[/]" if ok else "[red]DOES NOT match[/]"
    console.print(
        f"result {verdict} NumPy (max relative error {max(errors.values()):.1e}, tolerance 1e-9)"
    )
