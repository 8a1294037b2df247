"""Dask and Ray behind the same `System` interface, for `pip install -e '.[bench]'`.

Each runs 2 single-threaded worker processes on this machine, like Pool(2) and the shardmill
cluster, and calls the same functions from bench_tasks. Imported only when the package is.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bench_data import merge_parts
from bench_harness import WORKERS, cluster_env
from bench_tasks import noop, noop1, stats_block, stats_rows, stats_rows_slow

Ranges = Sequence[tuple[int, int]]


def _bench_on_path() -> None:
    """Worker processes import bench_tasks by name: put bench/ on their PYTHONPATH."""
    os.environ["PYTHONPATH"] = cluster_env()["PYTHONPATH"]


class DaskSystem:
    """A Dask scheduler and 2 worker processes (1 thread each), every one a subprocess.

    Not `LocalCluster`: its scheduler runs on an event loop inside the calling process, here
    the benchmark's, whose GIL it then shares with shardmill's client and Pool's threads
    (shardmill's W1 one per message ran ~20 % slower with it). `SubprocessCluster` puts the
    scheduler in a process of its own, as shardmill's master and Ray's raylet are."""

    name = "Dask"

    def __init__(self) -> None:
        _bench_on_path()
        from dask.distributed import Client
        from distributed.deploy.subprocess import SubprocessCluster

        self.cluster = SubprocessCluster(
            n_workers=WORKERS, threads_per_worker=1, dashboard_address=None
        )
        self.client = Client(self.cluster)

    def map_noop(self, n: int) -> list[int]:
        result: list[int] = self.client.gather(self.client.map(noop1, range(n), pure=False))
        return result

    def map_noop_each(self, n: int) -> list[int]:
        return self.map_noop(n)  # a task per item already

    def call_noop(self) -> None:
        self.client.submit(noop, pure=False).result()

    def stats_by_reference(self, path: str, ranges: Ranges) -> dict[str, Any]:
        futures = [self.client.submit(stats_rows, path, a, b, pure=False) for a, b in ranges]
        return merge_parts(self.client.gather(futures))

    def stats_by_value(self, blocks: Sequence[np.ndarray]) -> dict[str, Any]:
        # scatter: the client sends each block to a worker itself (Dask's way for big data)
        data = self.client.scatter(list(blocks))
        return merge_parts(self.client.gather(self.client.map(stats_block, data, pure=False)))

    def stats_of_array(self, data: np.ndarray, ranges: Ranges) -> dict[str, Any]:
        return self.stats_by_value([data[a:b] for a, b in ranges])

    def start_slow_stats(self, path: str, ranges: Ranges, extra: float):  # type: ignore[no-untyped-def]
        from dask.distributed import wait

        futures = [
            self.client.submit(stats_rows_slow, path, a, b, extra, pure=False) for a, b in ranges
        ]

        def result(timeout: float) -> dict[str, Any]:
            wait(futures, timeout=timeout)
            return merge_parts(self.client.gather(futures))

        return result

    def victim_pid(self) -> int:
        busy = [w for w, keys in self.client.processing().items() if keys]
        pids: dict[str, int] = self.client.run(os.getpid, workers=busy[:1])
        return next(iter(pids.values()))

    def forget_jobs(self) -> None:
        pass

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


class RaySystem:
    """A local Ray instance with 2 CPUs (so 2 worker processes run tasks at once)."""

    name = "Ray"

    def __init__(self) -> None:
        _bench_on_path()
        import ray

        self.ray = ray
        ray.init(
            num_cpus=WORKERS,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=2 * 2**30,
            configure_logging=False,
        )
        self.noop = ray.remote(noop)
        self.noop1 = ray.remote(noop1)
        self.rows = ray.remote(stats_rows)
        self.block = ray.remote(stats_block)
        self.slow = ray.remote(stats_rows_slow)

    def map_noop(self, n: int) -> list[int]:
        result: list[int] = self.ray.get([self.noop1.remote(i) for i in range(n)])
        return result

    def map_noop_each(self, n: int) -> list[int]:
        return self.map_noop(n)  # a task per item already

    def call_noop(self) -> None:
        self.ray.get(self.noop.remote())

    def stats_by_reference(self, path: str, ranges: Ranges) -> dict[str, Any]:
        return merge_parts(self.ray.get([self.rows.remote(path, a, b) for a, b in ranges]))

    def stats_by_value(self, blocks: Sequence[np.ndarray]) -> dict[str, Any]:
        return merge_parts(self.ray.get([self.block.remote(b) for b in blocks]))

    def stats_of_array(self, data: np.ndarray, ranges: Ranges) -> dict[str, Any]:
        return self.stats_by_value([data[a:b] for a, b in ranges])

    def start_slow_stats(self, path: str, ranges: Ranges, extra: float):  # type: ignore[no-untyped-def]
        refs = [self.slow.remote(path, a, b, extra) for a, b in ranges]
        return lambda timeout: merge_parts(self.ray.get(refs, timeout=timeout))

    def victim_pid(self) -> int:
        # Ray names a worker process after the task it runs: "ray::stats_rows_slow".
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if cmdline.startswith(b"ray::stats_rows_slow"):
                    return int(entry.name)
        raise LookupError("no Ray worker process is running stats_rows_slow")

    def forget_jobs(self) -> None:
        pass

    def close(self) -> None:
        self.ray.shutdown()


SYSTEMS = {"dask": DaskSystem, "ray": RaySystem}


def main() -> int:
    """`python bench_others.py startup NAME`: one cold start, as JSON (run.py's start-up row)."""
    if len(sys.argv) != 3 or sys.argv[1] != "startup" or sys.argv[2] not in SYSTEMS:
        print(f"usage: bench_others.py startup {{{','.join(SYSTEMS)}}}", file=sys.stderr)
        return 2
    cls = SYSTEMS[sys.argv[2]]
    if cls is DaskSystem:
        import dask.distributed  # noqa: F401  (imports are not start-up, as for the others)
    else:
        import ray  # noqa: F401
    t0 = time.perf_counter()
    system = cls()
    ready = time.perf_counter() - t0
    try:
        system.call_noop()
        first = time.perf_counter() - t0
    finally:
        system.close()
    print(json.dumps({"name": cls.name, "ready": ready, "first": first}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
