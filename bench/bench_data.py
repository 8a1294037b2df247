"""The benchmark dataset: generated once into bench/.data/, plus its reference statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench_harness import DATA_DIR

from shardmill.cli.demo import generate, one_process
from shardmill.data.sharding import plan_rows, read_npy_header
from shardmill.ops.column_stats import ColumnStats

STAT_KEYS = ("count", "sum", "mean", "std", "min", "max")
TOLERANCE = 1e-9  # the demo's: |got - want| / max(1, |want|)


class WrongResult(AssertionError):
    """Raised when a system's answer does not match the reference statistics."""


@dataclass(frozen=True)
class Dataset:
    path: Path
    rows: int
    cols: int
    reference: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return self.rows * self.cols * 8

    def ranges(self, shards: int) -> list[tuple[int, int]]:
        """The row ranges the master cuts for `shards` shards, so every system gets the same."""
        return [(r.start, r.stop) for r in plan_rows(str(self.path), shards, self.rows)]

    def check(self, got: dict[str, Any], what: str) -> None:
        check_stats(got, self.reference, what)


def ensure_file(rows: int, cols: int) -> Path:
    """Generate the .npy once (float64, seed 0) into bench/.data/; return its path."""
    DATA_DIR.mkdir(exist_ok=True)
    path = DATA_DIR / f"rows{rows}_cols{cols}_seed0.npy"
    if not _matches(path, rows, cols):
        generate(path, rows, cols)
    return path


def ensure_dataset(rows: int, cols: int) -> tuple[Dataset, str]:
    """The dataset and its reference statistics, computed in one process."""
    notes = []
    t0 = time.perf_counter()
    path = ensure_file(rows, cols)
    if time.perf_counter() - t0 > 1:
        notes.append(f"generated {path.name} in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    reference = one_process(path)
    notes.append(f"reference statistics in {time.perf_counter() - t0:.1f} s")
    return Dataset(path, rows, cols, reference), "; ".join(notes)


def _matches(path: Path, rows: int, cols: int) -> bool:
    if not path.exists():
        return False
    header = read_npy_header(str(path))
    return header.shape == (rows, cols) and header.dtype == np.float64


def merge_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-block partials in order with ColumnStats' Chan combine, then finalize."""
    op = ColumnStats()
    acc: dict[str, Any] = {"count": 0}
    for part in parts:
        acc = op.combine(acc, part)
    return op.finalize(acc)


def check_stats(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    """Raise WrongResult unless every statistic matches within TOLERANCE."""
    for key in STAT_KEYS:
        a, b = np.asarray(got[key], dtype=np.float64), np.asarray(want[key], dtype=np.float64)
        err = float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))
        if not err <= TOLERANCE:
            raise WrongResult(f"{what}: {key} is off by {err:.2e} (tolerance {TOLERANCE:g})")
