"""Benchmarks side by side with multiprocessing.Pool(2): `python bench/run.py --help`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench_cli import cli_queries
from bench_cluster import cold_start, scale, startup
from bench_context import Bench
from bench_far import far_workers
from bench_fault import w5_fault
from bench_harness import (
    DATA_DIR,
    FULL,
    POOL,
    QUICK,
    SHARDMILL,
    CpuMonitor,
    Metric,
    prepare_environment,
)
from bench_many import many_workers
from bench_report import evaluate, machine, render, write_json
from bench_runtime import REV_ENV, rerun_at
from bench_straggler import straggler
from bench_workloads import shard_curve, w1_throughput, w2_latency, w3_by_reference, w4_by_value
from rich.console import Console

log = logging.getLogger("bench")

# Each workload gets a fresh cluster (what one leaves on the master must not slow the next).
WORKLOADS: dict[str, Callable[[Bench], list[Metric]]] = {
    "startup": startup,
    "cold": cold_start,
    "W1": w1_throughput,
    "W2": w2_latency,
    "W3": w3_by_reference,
    "curve": shard_curve,
    "W4": w4_by_value,
    "scale": scale,
    "W5": w5_fault,
    "far": far_workers,
    "straggler": straggler,
    "cli": cli_queries,
    "many": many_workers,
}
BIG_SCALE_TASKS = 10_000_000
FOREIGN_WARN = 0.05  # warn when other processes took more than 5% of the CPUs


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes (1M-row data, 100k scale)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--reps", type=int, default=0, help="repetitions (default 5, 3 with --quick)")
    p.add_argument("--json", type=Path, default=None, help="where to write the JSON results")
    p.add_argument("--big", action="store_true", help=f"scale: {BIG_SCALE_TASKS:,} tasks")
    p.add_argument(
        "--rev", default="", help="benchmark this git revision of the runtime, not the working tree"
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each repetition, wait up to S s for other processes to leave the CPUs idle",
    )
    args = p.parse_args(argv)
    wanted = {w.strip().lower() for w in args.only.split(",") if w.strip()}
    unknown = wanted - {k.lower() for k in WORKLOADS}
    if unknown:
        p.error(f"--only: unknown workloads {sorted(unknown)}; choose from {list(WORKLOADS)}")
    args.selected = [k for k in WORKLOADS if not wanted or k.lower() in wanted]
    if args.reps < 0:
        p.error("--reps must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.rev and REV_ENV not in os.environ:
        rerun_at(args.rev, __file__, sys.argv[1:] if argv is None else argv)
    prepare_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench %(message)s")
    sizes = QUICK if args.quick else FULL
    if args.big:
        sizes = dataclasses.replace(sizes, scale_tasks=BIG_SCALE_TASKS)
    reps = args.reps or (3 if args.quick else 5)
    bench = Bench(sizes, reps, quiet_wait=args.wait_quiet)
    metrics: list[Metric] = []
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    foreign: dict[str, float] = {}
    try:
        for key in args.selected:
            bench.fresh_cluster()
            bench.monitor = monitor = CpuMonitor()
            bench.settle()
            log.info("running %s (%d reps)", key, reps)
            t0 = time.perf_counter()
            try:
                metrics += WORKLOADS[key](bench)
            except Exception as e:  # one broken workload must not hide the others' numbers
                log.error("workload %s failed", key, exc_info=True)
                errors[key] = f"{type(e).__name__}: {e}"
            seconds[key] = round(time.perf_counter() - t0, 1)
            foreign[key] = round(monitor.foreign_share(), 3)
            if foreign[key] > FOREIGN_WARN:
                log.warning("%s: other processes used %.0f%% of the CPUs", key, 100 * foreign[key])
    finally:
        bench.close()
    evaluate(metrics)
    console = Console(width=200)
    systems = [SHARDMILL, POOL, *(s.name for s in bench.others)]
    render(metrics, systems, console)
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in foreign.items())
    console.print(f"CPU share taken by other processes during each workload: {shares}")
    for name, why in bench.skipped.items():
        console.print(f"{name}: skipped, {why}")
    for key, err in errors.items():
        console.print(f"[red]{key} failed:[/] {err}")
    report = {
        "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
        "sizes": dataclasses.asdict(sizes),
        "reps": reps,
        "machine": machine(),
        "skipped": bench.skipped,
        "errors": errors,
        "workload_seconds": seconds,
        "foreign_cpu_share": foreign,
        "notes": bench.notes,
    }
    path = args.json or DATA_DIR / f"results-{sizes.name}.json"
    write_json(path, report, metrics)
    console.print(f"JSON written to {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
