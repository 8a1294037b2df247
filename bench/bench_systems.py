"""The systems under test behind one interface: shardmill, multiprocessing.Pool, and a hook.

Every workload is written once against `System`; a system only says how to run each piece.
Dask and Ray (bench_others.py) run when installed (`pip install -e '.[bench]'`) and are
skipped, with the reason, when not.
"""

from __future__ import annotations

import importlib.util
import inspect
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from bench_data import merge_parts
from bench_harness import CONNECT_TIMEOUT, JOB_TIMEOUT, POOL, SHARDMILL, WORKERS, child_pids
from bench_tasks import noop, noop1, stats_block, stats_rows, stats_rows_slow

from shardmill import Client, LocalCluster
from shardmill.job import Job

Ranges = Sequence[tuple[int, int]]
Waiter = Callable[[float], dict[str, Any]]  # wait(timeout) -> merged statistics


class System(Protocol):
    name: str

    def map_noop(self, n: int) -> list[int]:
        """Run noop1(i) for i in range(n), one task each; results in order."""
        ...

    def map_noop_each(self, n: int) -> list[int]:
        """The same, one task per message (no chunking, whatever the system would do)."""
        ...

    def call_noop(self) -> None:
        """One synchronous no-op round trip."""
        ...

    def stats_by_reference(self, path: str, ranges: Ranges) -> dict[str, Any]:
        """Column statistics of a .npy that every executor reads itself, one task per range."""
        ...

    def stats_by_value(self, blocks: Sequence[np.ndarray]) -> dict[str, Any]:
        """Column statistics of in-memory blocks shipped to the executors, one task per block."""
        ...

    def stats_of_array(self, data: np.ndarray, ranges: Ranges) -> dict[str, Any]:
        """Column statistics of an in-memory array handed over whole, split by the system."""
        ...

    def start_slow_stats(self, path: str, ranges: Ranges, extra: float) -> Waiter:
        """Start `stats_rows_slow` over the ranges; return a function that waits for the result."""
        ...

    def victim_pid(self) -> int:
        """The pid of a process running a task right now, for fault injection."""
        ...

    def forget_jobs(self) -> None:
        """Drop what earlier repetitions left behind (finished jobs), where there is any."""
        ...

    def close(self) -> None: ...


class ShardmillSystem:
    """A LocalCluster (master + 2 worker agents, one child each) and a client."""

    name = SHARDMILL

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.client = cluster.client(connect_timeout=CONNECT_TIMEOUT)
        self.last_job: Job | None = None

    def map_noop(self, n: int) -> list[int]:
        job = self.client.map("bench_tasks:noop1", [(i,) for i in range(n)])
        result: list[int] = job.result(timeout=JOB_TIMEOUT)
        return result

    def map_noop_each(self, n: int) -> list[int]:
        job = self.client.map("bench_tasks:noop1", [(i,) for i in range(n)], chunk_size=1)
        result: list[int] = job.result(timeout=JOB_TIMEOUT)
        return result

    def call_noop(self) -> None:
        self.client.call("bench_tasks:noop", timeout=JOB_TIMEOUT)

    def stats_by_reference(self, path: str, ranges: Ranges) -> dict[str, Any]:
        job = self.client.submit("column_stats", path, shards=len(ranges))
        stats: dict[str, Any] = job.result(timeout=JOB_TIMEOUT)
        if stats["shards_merged"] != len(ranges):
            raise AssertionError(f"{stats['shards_merged']} shards merged, not {len(ranges)}")
        return stats

    def stats_by_value(self, blocks: Sequence[np.ndarray]) -> dict[str, Any]:
        job = self.client.map("bench_tasks:stats_block", [(block,) for block in blocks])
        return merge_parts(job.result(timeout=JOB_TIMEOUT))

    def stats_of_array(self, data: np.ndarray, ranges: Ranges) -> dict[str, Any]:
        if not self.can_submit_arrays():
            raise NotImplementedError("this runtime's Client.submit takes no array")
        job = self.client.submit("column_stats", data, shards=len(ranges))
        stats: dict[str, Any] = job.result(timeout=JOB_TIMEOUT)
        return stats

    @staticmethod
    def can_submit_arrays() -> bool:
        """Whether `Client.submit` takes an array by value (added after the first runtime)."""
        annotation = inspect.signature(Client.submit).parameters["dataset"].annotation
        return "ndarray" in str(annotation)

    def start_slow_stats(self, path: str, ranges: Ranges, extra: float) -> Waiter:
        args = [(path, a, b, extra) for a, b in ranges]
        job = self.client.map("bench_tasks:stats_rows_slow", args, chunk_size=1)
        self.last_job = job
        return lambda timeout: merge_parts(job.result(timeout=timeout))

    def victim_pid(self) -> int:
        # With one slot per agent, an agent's only child is the one running its shard.
        agents = sorted(w.pid for w in self.client.workers())
        for agent in agents:
            children = child_pids(agent)
            if children:
                return children[0]
        raise LookupError(f"no child processes under the worker agents {agents}")

    def forget_jobs(self) -> None:
        # The master keeps finished jobs (for a week by default) and some of its work grows
        # with their number (RESULTS.md): each repetition starts without the last one's.
        prune = getattr(self.client, "prune", None)
        if prune is not None:
            prune(0)

    def close(self) -> None:
        self.client.close()
        self.cluster.stop()


class PoolSystem:
    """multiprocessing.Pool(2) with the default start method (fork on Linux)."""

    name = POOL

    def __init__(self) -> None:
        self.pool = multiprocessing.Pool(WORKERS)

    def map_noop(self, n: int) -> list[int]:
        return self.pool.map(noop1, range(n))

    def map_noop_each(self, n: int) -> list[int]:
        return self.pool.map(noop1, range(n), chunksize=1)

    def call_noop(self) -> None:
        self.pool.apply(noop)

    def stats_by_reference(self, path: str, ranges: Ranges) -> dict[str, Any]:
        args = [(path, a, b) for a, b in ranges]
        return merge_parts(self.pool.starmap(stats_rows, args, chunksize=1))

    def stats_by_value(self, blocks: Sequence[np.ndarray]) -> dict[str, Any]:
        return merge_parts(self.pool.map(stats_block, blocks, chunksize=1))

    def stats_of_array(self, data: np.ndarray, ranges: Ranges) -> dict[str, Any]:
        return self.stats_by_value([data[a:b] for a, b in ranges])

    def start_slow_stats(self, path: str, ranges: Ranges, extra: float) -> Waiter:
        args = [(path, a, b, extra) for a, b in ranges]
        res = self.pool.starmap_async(stats_rows_slow, args, chunksize=1)
        return lambda timeout: merge_parts(res.get(timeout=timeout))

    def victim_pid(self) -> int:
        # Pool has no public list of its processes; `_pool` is that list.
        pid: int = self.pool._pool[0].pid  # type: ignore[attr-defined]
        return pid

    def forget_jobs(self) -> None:
        pass

    def restart(self) -> None:
        """Replace a pool that a fault left unusable."""
        self.close()
        self.pool = multiprocessing.Pool(WORKERS)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def _dask() -> System:
    from bench_others import DaskSystem

    return DaskSystem()


def _ray() -> System:
    from bench_others import RaySystem

    return RaySystem()


# name -> (module that must be importable, factory): `pip install -e '.[bench]'` adds them.
OPTIONAL: dict[str, tuple[str, Callable[[], System] | None]] = {
    "dask": ("distributed", _dask),
    "ray": ("ray", _ray),
}


def available_optional() -> list[str]:
    """The optional systems installed here, by their OPTIONAL names."""
    return [
        name
        for name, (module, factory) in OPTIONAL.items()
        if factory is not None and importlib.util.find_spec(module) is not None
    ]


def optional_systems() -> tuple[list[System], dict[str, str]]:
    """The optional systems that can run here, and why each of the others is skipped."""
    systems: list[System] = []
    skipped: dict[str, str] = {}
    for name, (module, factory) in OPTIONAL.items():
        if importlib.util.find_spec(module.split(".")[0]) is None:
            skipped[name] = f"not installed ({module} is not importable)"
        elif factory is None:
            skipped[name] = "installed, but no adapter yet: implement System in bench_systems.py"
        else:
            systems.append(factory())
    return systems, skipped
