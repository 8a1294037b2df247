"""Profile the runtime under one workload: `python bench/profile_runtime.py W2 [--top 25]`.

Every process of the cluster (master, worker agents, their children) runs under cProfile by
way of profiling/sitecustomize.py; the client is profiled here. Prints each role's hot spots
and leaves the .prof files in bench/.data/profiles/<workload>/ for snakeviz or pstats.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_data import ensure_file
from bench_harness import (
    BENCH_DIR,
    DATA_DIR,
    FULL,
    new_cluster,
    prepare_environment,
    thread_cpu,
)
from bench_runtime import REV_ENV, rerun_at
from bench_systems import ShardmillSystem

from shardmill.data.sharding import plan_rows

PROFILES = DATA_DIR / "profiles"


Prepared = Callable[[], None]  # the measured part of a workload, after its setup


def _w1(s: ShardmillSystem, rows: int) -> Prepared:
    def run() -> None:
        for _ in range(20):
            s.map_noop(FULL.w1_tasks)

    return run


def _w2(s: ShardmillSystem, rows: int) -> Prepared:
    def run() -> None:
        for _ in range(10):
            for _ in range(200):
                s.call_noop()
            # Finished jobs slow every dispatch (see RESULTS.md): keep them out of this profile.
            s.client.prune(0)

    return run


def _w3(s: ShardmillSystem, rows: int) -> Prepared:
    path = str(ensure_file(rows, FULL.cols))
    ranges = plan(path, FULL.shards, rows)

    def run() -> None:
        for _ in range(5):
            s.stats_by_reference(path, ranges)

    return run


def _w4(s: ShardmillSystem, rows: int) -> Prepared:
    path = ensure_file(rows, FULL.cols)
    data = np.load(path)
    blocks = [data[a:b] for a, b in plan(str(path), FULL.shards, rows)]

    def run() -> None:
        for _ in range(3):
            s.stats_by_value(blocks)

    return run


def _w4_submit(s: ShardmillSystem, rows: int) -> Prepared:
    path = ensure_file(rows, FULL.cols)
    data = np.load(path)
    ranges = plan(str(path), FULL.shards, rows)

    def run() -> None:
        for _ in range(3):
            s.stats_of_array(data, ranges)

    return run


def _curve(s: ShardmillSystem, rows: int) -> Prepared:
    path = str(ensure_file(rows, FULL.cols))
    ranges = plan(path, 2048, rows)

    def run() -> None:
        for _ in range(3):
            s.stats_by_reference(path, ranges)

    return run


def _scale(s: ShardmillSystem, rows: int) -> Prepared:

    def run() -> None:
        s.map_noop(FULL.scale_tasks)

    return run


def plan(path: str, shards: int, rows: int) -> list[tuple[int, int]]:
    return [(r.start, r.stop) for r in plan_rows(path, shards, rows)]


WORKLOADS: dict[str, Callable[[ShardmillSystem, int], Prepared]] = {
    "W1": _w1,
    "W2": _w2,
    "W3": _w3,
    "W4": _w4,
    "W4-submit": _w4_submit,
    "curve": _curve,
    "scale": _scale,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--rows", type=int, default=FULL.rows)
    p.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    p.add_argument("--rev", default="", help="profile this git revision of the runtime")
    p.add_argument(
        "--no-cprofile",
        action="store_true",
        help="only count CPU seconds per process and thread (no profiler overhead)",
    )
    args = p.parse_args()
    if args.rev and REV_ENV not in os.environ:
        rerun_at(args.rev, __file__, sys.argv[1:])
    prepare_environment()
    out = PROFILES / args.workload
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if not args.no_cprofile:
        os.environ["SHARDMILL_BENCH_PROFILE"] = str(out)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(BENCH_DIR / "profiling"), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    system = ShardmillSystem(new_cluster().start())
    try:
        system.call_noop()  # children warm before the profile counts
        run = WORKLOADS[args.workload](system, args.rows)
        before, t0 = thread_cpu(), time.perf_counter()
        profile = cProfile.Profile()
        profile.runcall(run)
        wall, after = time.perf_counter() - t0, thread_cpu()
        profile.dump_stats(out / f"client-{os.getpid()}.prof")
    finally:
        system.close()
    if not args.no_cprofile:
        report(out, args.top, args.sort)
    print_threads(before, after, wall)
    return 0


def print_threads(
    before: dict[tuple[int, str, str], float], after: dict[tuple[int, str, str], float], wall: float
) -> None:
    """CPU seconds each process and thread spent during the workload (zmq I/O threads too)."""
    print(f"\n===== CPU seconds per thread during {wall:.2f} s of wall time =====")
    rows = [(after[k] - before.get(k, 0.0), k) for k in after]
    for cpu, (pid, role, thread) in sorted(rows, reverse=True):
        if cpu >= 0.01:
            print(f"{cpu:8.2f}  {role:24s} pid {pid:<7d} {thread}")
    print(f"{sum(r[0] for r in rows):8.2f}  total ({wall * (os.cpu_count() or 1):.2f} available)")


def report(out: Path, top: int, sort: str) -> None:
    """Print the hot spots of each role, its processes' profiles added together."""
    roles: dict[str, list[str]] = defaultdict(list)
    for f in sorted(out.glob("*.prof")):
        roles[f.stem.rsplit("-", 1)[0]].append(str(f))
    for role, files in sorted(roles.items()):
        print(f"\n===== {role} ({len(files)} process(es)) =====")
        stats = pstats.Stats(*files, stream=sys.stdout)
        stats.strip_dirs().sort_stats(sort).print_stats(top)


if __name__ == "__main__":
    sys.exit(main())
