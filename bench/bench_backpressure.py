"""Backpressure across a shuffle: a map stage ten times faster than the stage after it.

One pipeline, three ways in one run, each on 2 workers of one process slot: read a .npy of
ROWS (user, amount) rows, a fast map (0.2 µs a row), a shuffle by user, a step ten times slower
(2 µs a row) on each partition's rows, a sum at the client.

- shardmill with an edge budget (`client.run(p, edge_budget=...)`, 32 MiB by default);
- shardmill with no budget (0: a stage at a time, the whole map output waiting);
- Dask DataFrame, P2P shuffle (`shuffle_method="p2p"`), then the same step per partition.

For each: wall time; the most bytes of map output waiting on the workers' disks at once (sampled
every 5 ms from outside: shardmill's stage-0 outputs under each worker's --shuffle-dir; Dask's
workers' local directories, where P2P keeps its shards); the peak of the summed RSS of every
process the benchmark started. The sums are checked against NumPy on every run.

    python bench/bench_backpressure.py                          # 16,000,000 rows, 64 shards
    python bench/bench_backpressure.py --rows 4000000 --budget-mib 8 --no-dask
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_shuffle import HERE, Peak, make_data, peak_rss

PARTS = 16


def disk_peak(root: Path, counts: Callable[[Path], bool]) -> Peak:
    """The most bytes of files under `root` at once whose directory passes `counts`."""
    return Peak(lambda: _disk_bytes(root, counts), every=0.005)


def _disk_bytes(root: Path, counts: Callable[[Path], bool]) -> int:
    total = 0
    for top, _, files in os.walk(root):  # (os.walk passes over what goes away meanwhile)
        if not counts(Path(top)):
            continue
        for name in files:
            try:
                total += os.stat(os.path.join(top, name)).st_size
            except OSError:  # gone meanwhile
                continue
    return total


def _map_output(top: Path) -> bool:
    """A run directory of a stage-0 output: WORKER/TOKEN/s0-.../rN (or its .tmp twin)."""
    return top.parent.name.lstrip(".").startswith("s0-")


def shardmill_run(path: Path, shards: int, budget: int) -> dict[str, Any]:
    from shardmill import LocalCluster, Pipeline

    root = Path(tempfile.mkdtemp(prefix="shardmill-edges-"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
        "SHARDMILL_WORKER_SHUFFLE_DIR": str(root),
    }
    p = (
        Pipeline.read(path, shards=shards)
        .map("shuffle_tasks:paced")
        .repartition("user", partitions=PARTS)
        .map("shuffle_tasks:slow")
        .collect()
    )
    try:
        with LocalCluster(workers=2, slots=1, imports=["shuffle_tasks"], env=env) as cluster:
            client = cluster.client()
            with peak_rss() as rss, disk_peak(root, _map_output) as disk:
                started = time.perf_counter()
                job = client.run(p, edge_budget=budget)
                out = job.result(timeout=3600)
                seconds = time.perf_counter() - started
            stage = job.progress()[0]
            client.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "seconds": round(seconds, 1),
        "waiting_peak_mib": round(disk.peak / 2**20, 1),
        "edge_peak_mib": round(stage.edge_peak / 2**20, 1),
        "waves": stage.waves,
        "peak_rss_mib": round(rss.peak / 2**20),
        "rows": int(out["n"].sum()),
        "sum": int(out["s"].sum()),
    }


def dask_run(path: Path, shards: int) -> dict[str, Any]:
    import dask.dataframe as dd
    import pandas as pd
    from dask.distributed import Client
    from distributed.deploy.subprocess import SubprocessCluster

    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *sys.path])  # its workers import us
    from shuffle_tasks import load_frame, paced_frame, slow_frame

    root = Path(tempfile.mkdtemp(prefix="dask-edges-"))
    cluster = SubprocessCluster(
        n_workers=2,
        threads_per_worker=1,
        dashboard_address=None,
        worker_kwargs={"local_directory": str(root)},
    )
    client = Client(cluster)
    rows = np.load(path, mmap_mode="r").shape[0]
    chunk = -(-rows // shards)
    parts = [(str(path), a, min(a + chunk, rows)) for a in range(0, rows, chunk)]
    try:
        with peak_rss() as rss, disk_peak(root, lambda top: True) as disk:
            started = time.perf_counter()
            df = dd.from_map(load_frame, parts).map_partitions(paced_frame)
            shuffled = df.shuffle("user", npartitions=PARTS, shuffle_method="p2p")
            meta = pd.DataFrame({"n": pd.Series(dtype="int64"), "s": pd.Series(dtype="int64")})
            out = client.compute(shuffled.map_partitions(slow_frame, meta=meta)).result()
            seconds = time.perf_counter() - started
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "seconds": round(seconds, 1),
        "waiting_peak_mib": round(disk.peak / 2**20, 1),
        "peak_rss_mib": round(rss.peak / 2**20),
        "rows": int(out["n"].sum()),
        "sum": int(out["s"].sum()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=16_000_000)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--budget-mib", type=int, default=32)
    parser.add_argument("--no-dask", action="store_true")
    args = parser.parse_args()
    path = make_data(args.rows, 1_000_000)
    data = np.load(path, mmap_mode="r")
    want = {"rows": args.rows, "sum": int(np.asarray(data[:, 1]).sum()) * 2}
    runs = {
        f"shardmill, edge budget {args.budget_mib} MiB": shardmill_run(
            path, args.shards, args.budget_mib << 20
        ),
        "shardmill, no budget": shardmill_run(path, args.shards, 0),
    }
    if not args.no_dask:
        runs["dask p2p"] = dask_run(path, args.shards)
    for name, got in runs.items():
        assert (got["rows"], got["sum"]) == (want["rows"], want["sum"]), (name, got, want)
    output_mib = args.rows * 16 / 2**20
    print(json.dumps({"rows": args.rows, "map_output_mib": round(output_mib, 1), **runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
