"""Task functions for the benchmarks: importable by shardmill workers and by Pool children."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from shardmill.ops.column_stats import ColumnStats

_MAPS: dict[str, np.ndarray] = {}


def noop() -> None:
    """Do nothing: the round trip is all there is to measure."""


def noop1(x: int) -> int:
    """Return the argument: one tiny task per item."""
    return x


def stats_block(block: np.ndarray) -> dict[str, Any]:
    """Column statistics of one row block that travelled by value."""
    return ColumnStats().run(block)


def stats_rows(path: str, start: int, stop: int) -> dict[str, Any]:
    """Column statistics of rows [start, stop) of a .npy file, memory-mapped once per process."""
    return ColumnStats().run(_mapped(path)[start:stop])


def stats_rows_slow(path: str, start: int, stop: int, extra: float) -> dict[str, Any]:
    """`stats_rows` plus `extra` seconds of sleep: a shard with a known amount of work."""
    part = stats_rows(path, start, stop)
    time.sleep(extra)
    return part


def _mapped(path: str) -> np.ndarray:
    arr = _MAPS.get(path)
    if arr is None:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        _MAPS[path] = arr
    return arr


def nap_or_crawl(x: int, seconds: float, slow_file: str) -> int:
    """Sleep `seconds`, or 10 times that on the worker named in `slow_file` (a slow host)."""
    with open(slow_file) as f:
        slow = f.read().strip()
    time.sleep(seconds * (10 if slow and os.environ.get("SHARDMILL_WORKER_ID") == slow else 1))
    return x


def wait1ms(x: int) -> int:
    """Sleep 1 ms and return the argument: joblib's small-call workload (bench_joblib.py)."""
    time.sleep(0.001)
    return x
