"""What a user writes: `Pipeline.read(...).map(...).groupby(...).agg(...).sort(...).write(...)`.

A Pipeline is a description, nothing runs until `client.run(p)`; each method returns a new
Pipeline, so a prefix can be shared by two pipelines. Functions are named "module:function",
importable on the workers (started with `--import module`), never pickled.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardmill.data.paths import located
from shardmill.pipeline.aggregate import check_aggs
from shardmill.pipeline.joins import HOWS
from shardmill.pipeline.tables import check_table
from shardmill.wire.spec import FunctionRef  # noqa: F401  (the form function names take)

Step = dict[str, Any]


@dataclass(frozen=True)
class Pipeline:
    """A chain of steps over tables (a dict of equal-length 1-D NumPy arrays per shard)."""

    steps: tuple[Step, ...] = field(default=())

    # ---- sources -------------------------------------------------------------------------------

    @classmethod
    def read(
        cls,
        dataset: str | os.PathLike[str] | None = None,
        *,
        shards: int | None = None,
        **spec: Any,
    ) -> Pipeline:
        """Any dataset the project reads (.npy, a directory of .npy parts, CSV, Parquet,
        synthetic=...): each shard becomes a table, its columns named as the file names them
        ("0", "1", ... for .npy). `spec` takes the dataset fields of a job spec (format,
        header, delimiter, dtypes, synthetic, rows_per_shard, target_bytes)."""
        path = None if dataset is None else located(os.fspath(dataset))
        return cls(({"op": "read", "dataset": path, "shards": shards, "spec": spec},))

    @classmethod
    def from_tables(cls, tables: Sequence[dict[str, Any]]) -> Pipeline:
        """Tables sent by value, one shard each."""
        checked = [check_table(t, f"table {i}") for i, t in enumerate(tables)]
        if not checked:
            raise ValueError("from_tables: give at least one table")
        return cls(({"op": "tables", "tables": checked},))

    # ---- narrow steps: run where the rows are ----------------------------------------------------

    def map(self, function: str) -> Pipeline:
        """`function(table) -> table`, per shard (per partition after a shuffle)."""
        return self._then({"op": "map", "fn": _ref(function)})

    def filter(self, predicate: str) -> Pipeline:
        """Keep the rows where `predicate(table)` (a bool array, one per row) is True."""
        return self._then({"op": "filter", "fn": _ref(predicate)})

    def map_partitions(self, function: str) -> Pipeline:
        """`function(table) -> table` on each partition as a whole (after `repartition`, every
        row of a key is in one call: a user's own reduce)."""
        return self._then({"op": "map_partitions", "fn": _ref(function)})

    # ---- wide steps: a shuffle between workers ---------------------------------------------------

    def groupby(self, *keys: str, partitions: int | None = None) -> GroupBy:
        if not keys:
            raise ValueError("groupby: name at least one key column")
        return GroupBy(self, tuple(keys), partitions)

    def sort(
        self, key: str, *, descending: bool = False, partitions: int | None = None
    ) -> Pipeline:
        """Every row in order of `key` (stable), across partitions: range-partitioned by
        splitters from a sample of each shard's keys."""
        return self._then(
            {"op": "sort", "key": key, "descending": descending, "partitions": _parts(partitions)}
        )

    def join(
        self, other: Pipeline, on: str, *, how: str = "inner", partitions: int | None = None
    ) -> Pipeline:
        """Rows of both with equal `on` (inner), or every row of this one (left); both sides
        are shuffled by the key."""
        if how not in HOWS:
            raise ValueError(f"join: how={how!r}; use one of {', '.join(HOWS)}")
        if not isinstance(other, Pipeline) or other.terminal:
            raise ValueError("join: the other side must be a Pipeline without collect/write")
        return self._then(
            {
                "op": "join",
                "other": other.steps,
                "on": on,
                "how": how,
                "partitions": _parts(partitions),
            }
        )

    def repartition(self, *keys: str, partitions: int | None = None) -> Pipeline:
        """Move every row to the partition its key hashes to (no aggregation)."""
        if not keys:
            raise ValueError("repartition: name at least one key column")
        return self._then(
            {"op": "repartition", "keys": list(keys), "partitions": _parts(partitions)}
        )

    # ---- where the result goes -----------------------------------------------------------------

    def collect(self) -> Pipeline:
        """The whole result as one table at the client (`job.result()`)."""
        return self._then({"op": "collect"})

    def write(self, path: str | os.PathLike[str]) -> Pipeline:
        """One `part-NNNNN.npz` per final partition under `path` (a directory every worker can
        write); `job.result()` lists the files. Load with `shardmill.pipeline.read_parts`."""
        return self._then({"op": "write", "path": os.path.abspath(os.fspath(path))})

    @property
    def terminal(self) -> bool:
        return bool(self.steps) and self.steps[-1]["op"] in ("collect", "write")

    def _then(self, step: Step) -> Pipeline:
        if self.terminal:
            raise ValueError(f"{step['op']}: nothing can follow collect() or write()")
        return Pipeline((*self.steps, step))


@dataclass(frozen=True)
class GroupBy:
    pipeline: Pipeline
    keys: tuple[str, ...]
    partitions: int | None

    def agg(self, **aggs: tuple[str, str]) -> Pipeline:
        """`name=(column, function)` with sum, count, mean, min or max: one row per key."""
        if not aggs:
            raise ValueError("agg: name at least one aggregate, e.g. total=('amount', 'sum')")
        flat = [(name, col, fn) for name, (col, fn) in aggs.items()]
        check_aggs(self.keys, flat)
        return self.pipeline._then(
            {
                "op": "groupby",
                "keys": list(self.keys),
                "aggs": [list(a) for a in flat],
                "partitions": _parts(self.partitions),
            }
        )


def _ref(function: str) -> str:
    module, _, name = function.partition(":")
    if not module or not name.isidentifier():
        raise ValueError(f"{function!r}: name a function as 'module:function'")
    return function


def _parts(partitions: int | None) -> int | None:
    if partitions is not None and not 1 <= partitions <= 100_000:
        raise ValueError(f"partitions={partitions}: give 1 to 100000")
    return partitions


def read_parts(files: Sequence[str]) -> dict[str, np.ndarray]:
    """The table a `write` made, from the files its job's result lists (in partition order)."""
    tables = []
    for path in files:
        with np.load(path, allow_pickle=False) as f:
            tables.append({name: f[name] for name in f.files})
    names = list(tables[0]) if tables else []
    return {n: np.concatenate([t[n] for t in tables]) for n in names}
