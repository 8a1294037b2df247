"""Where a stage shard's rows go, a batch at a time: partitioned to this worker's shuffle
directory (hash or range), back to the client, or to files. Shuffle sinks buffer up to half the
shard's byte budget, then spill a run to disk: memory is bounded by bytes, not rows or tasks.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from shardmill.data.sharding import stable_hash
from shardmill.errors import BadInput
from shardmill.pipeline import aggregate
from shardmill.pipeline.store import OutputWriter
from shardmill.pipeline.tables import Table, concat, key_columns, nbytes, rows, take

_MIX = np.uint64(0x100000001B3)


class Sink:
    """A batch in with `add`, the shard's result out with `finish`."""

    def add(self, table: Table) -> None:
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        raise NotImplementedError


def partitions_of(table: Table, keys: list[str], parts: int, where: str) -> np.ndarray:
    """Each row's partition: a stable hash of its key's bytes (the same in every process)."""
    cols = key_columns(table, keys, where)
    h = stable_hash(cols[0])
    for col in cols[1:]:
        h = (h * _MIX) ^ stable_hash(col)
    return (h % np.uint64(parts)).astype(np.int64)


class _Spilling(Sink):
    """Buffers up to a quarter of the budget, then spills a run: sorting or folding what it
    holds takes about as much again, and fetch pages the last quarter."""

    def __init__(self, task: dict[str, Any], budget: int, where: str) -> None:
        root = Path(os.environ.get("SHARDMILL_SHUFFLE_DIR", ""))
        self.holder = os.environ.get("SHARDMILL_SHUFFLE_ADDR", "")
        if not self.holder or not root.name:
            raise BadInput(
                f"{where}: this worker serves no shuffle (it predates pipelines, or its piece "
                "server failed to start: see its log); upgrade or restart it"
            )
        kind = "s" if task.get("absorb") is None else "a"  # a map output, or an absorbed run
        out_id = f"{kind}{task['stage']}-{task['shard']}-{uuid.uuid4().hex[:12]}"
        self.writer = OutputWriter(root, task["token"], out_id, where)
        self.budget, self.where = budget, where
        self.buffered: list[Table] = []
        self.bytes = 0
        self.rows = 0

    def add(self, table: Table) -> None:
        if not rows(table):
            return
        self.rows += rows(table)
        self.buffered.append(table)
        self.bytes += nbytes(table)
        if self.bytes > self.budget // 4:
            self._compact()

    def _compact(self) -> None:
        self._spill()

    def _spill(self) -> None:
        raise NotImplementedError

    def _taken(self) -> Table:
        """The buffered rows as one table, the buffers let go (so the copies a spill makes
        never sit beside them)."""
        table = concat(self.buffered, self.where)
        self.buffered, self.bytes = [], 0
        return table

    def _result(self, meta: dict[str, Any]) -> dict[str, Any]:
        if self.buffered or not self.writer.runs:
            self._spill()
        self.writer.finish(meta)
        return {
            "out": self.writer.out_id,
            "holder": self.holder,
            "key": os.environ.get("SHARDMILL_SHUFFLE_PUBLIC", ""),
            "runs": self.writer.runs,
            "rows": self.rows,
            "bytes": self.writer.bytes,
            "digest": self.writer.digest.hexdigest(),
        }


class HashSink(_Spilling):
    """Rows grouped by partition; with `agg`, partial aggregates (the combiner)."""

    def __init__(self, task: dict[str, Any], budget: int, where: str) -> None:
        super().__init__(task, budget, where)
        out = task["output"]
        self.keys: list[str] = out["keys"]
        self.parts = int(out["partitions"])
        self.agg = out.get("agg")
        self.aggs = [tuple(a) for a in self.agg["aggs"]] if self.agg else []
        self.sizes = np.zeros(self.parts, dtype=np.int64)  # rows per partition, every run

    def add(self, table: Table) -> None:
        if self.agg and rows(table):
            table = aggregate.partial(table, self.agg["keys"], self.aggs, self.where)
        super().add(table)

    def _compact(self) -> None:
        if self.agg and len(self.buffered) > 1:  # fold partials first: keys repeat
            folded = aggregate.fold(
                concat(self.buffered, self.where), self.keys, self.aggs, self.where
            )
            self.buffered, self.bytes = [folded], nbytes(folded)
            if self.bytes <= self.budget // 8:
                return
        self._spill()

    def _spill(self) -> None:
        folds = bool(self.agg) and len(self.buffered) > 1
        table = self._taken()
        if folds:
            table = aggregate.fold(table, self.keys, self.aggs, self.where)
        if table:
            part = partitions_of(table, self.keys, self.parts, self.where)
            table = take(table, np.argsort(part, kind="stable"))
            counts = np.bincount(part, minlength=self.parts)
        else:
            counts = np.zeros(self.parts, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        self.writer.run(table, offsets)
        self.sizes += counts

    def finish(self) -> dict[str, Any]:
        result = self._result({"kind": "hash"})
        result["sizes"] = self.sizes.tolist()
        return result


class RunSink(_Spilling):
    """A consumer partition's absorbed wave: its rows in the order they come, one partition
    (so a sorted wave stays sorted, run after run)."""

    def _spill(self) -> None:
        table = self._taken()
        self.writer.run(table, np.array([0, rows(table)], dtype=np.int64))

    def finish(self) -> dict[str, Any]:
        result = self._result({"kind": "hash"})
        result["sizes"] = [self.rows]
        return result


class RangeSink(_Spilling):
    """Runs sorted by the key, and a sample of keys for the splitters."""

    def __init__(self, task: dict[str, Any], budget: int, where: str) -> None:
        super().__init__(task, budget, where)
        self.key: str = task["output"]["key"]
        self.samples = int(task["output"]["samples"])
        self.picked: list[np.ndarray] = []

    def add(self, table: Table) -> None:
        if rows(table):
            sort_column(table, self.key, self.where)
        super().add(table)

    def _spill(self) -> None:
        table = self._taken()
        if table:
            table = take(table, np.argsort(table[self.key], kind="stable"))
            n = rows(table)
            picks = np.linspace(0, n - 1, num=min(n, self.samples)).astype(np.int64)
            self.picked.append(table[self.key][picks])
        self.writer.run(table)

    def finish(self) -> dict[str, Any]:
        result = self._result({"kind": "range", "key": self.key})
        keys = np.sort(np.concatenate(self.picked), kind="stable") if self.picked else np.zeros(0)
        if len(keys) > self.samples:
            keys = keys[np.linspace(0, len(keys) - 1, num=self.samples).astype(np.int64)]
        result["sample"] = keys
        return result


def sort_column(table: Table, key: str, where: str) -> np.ndarray:
    if key not in table:
        key_columns(table, [key], where)  # raises, naming the missing column
    col = table[key]
    if col.dtype.kind not in "biufUS":
        raise BadInput(
            f"{where}: sort column {key!r} has dtype {col.dtype}; sort by numbers or strings"
        )
    return col


class CollectSink(Sink):
    """The rows back to the client, in order (reversed batches for a descending sort)."""

    def __init__(self, where: str, *, reverse: bool = False) -> None:
        self.tables: list[Table] = []
        self.where, self.reverse = where, reverse

    def add(self, table: Table) -> None:
        self.tables.append(table)

    def finish(self) -> dict[str, Any]:
        tables = self.tables[::-1] if self.reverse else self.tables
        table = concat(tables, self.where)
        return {"table": table, "rows": rows(table)}


class WriteSink(Sink):
    """`part-SSSSS-CCCCC.npz` files under the output path, in name order as the rows go (a
    descending sort's batches come last first, so they are numbered down)."""

    def __init__(self, path: str, shard: int, budget: int, where: str, *, reverse: bool) -> None:
        self.dir, self.shard, self.where, self.reverse = Path(path), shard, where, reverse
        self.budget = budget
        self.pending: list[Table] = []
        self.bytes = 0
        self.files: list[str] = []
        self.rows = 0

    def add(self, table: Table) -> None:
        self.pending.append(table)
        self.bytes += nbytes(table)
        self.rows += rows(table)
        if self.bytes > self.budget // 8:
            self._flush()

    def _flush(self) -> None:
        table = concat(self.pending, self.where)
        self.pending, self.bytes = [], 0
        if not table and self.files:
            return
        n = len(self.files)
        path = self.dir / f"part-{self.shard:05d}-{(99999 - n) if self.reverse else n:05d}.npz"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".{path.stem}.{uuid.uuid4().hex[:8]}.npz"
            np.savez(tmp, **table)  # type: ignore[arg-type]
            tmp.replace(path)
        except OSError as e:
            raise BadInput(
                f"{self.where}: cannot write {path}: {e.strerror or e}; check the output "
                "directory is on a disk every worker can write",
                retryable=True,
            ) from e
        self.files.append(str(path))

    def finish(self) -> dict[str, Any]:
        if self.pending or not self.files:
            self._flush()
        return {"files": sorted(self.files), "rows": self.rows}
