"""Checkpointing on vs off, and the time from a master restart to its first new merge.

    python bench/bench_checkpoint.py [--reps 5] [--rows 10000000]

Runs in one process, side by side: the same jobs on a LocalCluster with and without
`--state-dir`. Prints medians; targets (issue "Checkpointing"): at most 5 % slower with
checkpointing on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shardmill import LocalCluster
from shardmill.demo import generate

HERE = Path(__file__).resolve().parent


def _dataset(rows: int) -> Path:
    path = HERE / ".data" / f"rows{rows}_cols10_seed0.npy"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        generate(path, rows, 10, seed=0)
    return path


def _median(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up: page cache, children's imports
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _cluster(state_dir: Path | None) -> LocalCluster:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return LocalCluster(
        workers=2, imports=["bench_tasks", "ckpt_tasks"], env=env, state_dir=state_dir
    )


def _one_setting(data: Path, reps: int, state_dir: Path | None) -> tuple[float, float]:
    with _cluster(state_dir) as cluster:
        client = cluster.client()
        args = [(i,) for i in range(10_000)]
        stats = _median(lambda: client.submit("column_stats", data, shards=32).result(600), reps)
        tasks = _median(lambda: client.map("bench_tasks:noop1", args).result(600), reps)
        client.close()
    return stats, tasks


def measure(reps: int, rows: int) -> dict[str, tuple[float, float]]:
    data = _dataset(rows)
    off = _one_setting(data, reps, None)
    with tempfile.TemporaryDirectory() as tmp:
        on = _one_setting(data, reps, Path(tmp) / "state")
    return {"column_stats": (off[0], on[0]), "map10k": (off[1], on[1])}


def restart_to_first_merge() -> float:
    """Kill -9 the master mid-job, start it again, time until a shard merges."""
    with tempfile.TemporaryDirectory() as tmp, _cluster(Path(tmp) / "s") as c:
        client = c.client()
        job = client.map("ckpt_tasks:sleepy", [(0.05,)] * 200, chunk_size=1)
        while job.status().shards_done < 20:
            time.sleep(0.01)
        c.kill_master()
        t = time.perf_counter()
        c.start_master()
        client.close()
        client = c.client()
        start_done = client.status(job.id).shards_done
        while client.status(job.id).shards_done <= start_done:
            time.sleep(0.005)
        elapsed = time.perf_counter() - t
        job.result(timeout=600)
        client.close()
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    for key, (off, on) in measure(args.reps, args.rows).items():
        verdict = "ok" if on <= 1.05 * off else "OVER the 5 % target"
        print(f"{key:>13}: off {off:.3f} s, on {on:.3f} s, ratio {on / off:.3f} ({verdict})")
    print(
        f"restart to first new merge: {restart_to_first_merge():.3f} s "
        "(default heartbeats: 1 s x 3; workers re-register within that)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
