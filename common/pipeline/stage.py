"""One shard of a pipeline stage, run in a worker's child: read its input (a dataset shard, or
its partition fetched from the peers that hold the stage before's outputs), apply the stage's
narrow steps (map, filter, map_partitions), then write its output: partitioned by key to this
worker's shuffle directory for the next stage, or back to the client (collect), or to files.

The same input gives the same bytes: partitions come from a stable hash of the key's bytes,
pieces are combined in map-shard order and sorts are stable, so a recomputed output is
byte-identical to the one it replaces.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shardmill.data.readers import iter_chunks
from shardmill.data.sharding import stable_hash
from shardmill.errors import BadInput
from shardmill.ops.registry import Registry
from shardmill.pipeline import aggregate, joins
from shardmill.pipeline.fetch import Piece, fetch
from shardmill.pipeline.store import write_output
from shardmill.pipeline.tables import Table, check_table, concat, key_columns, nbytes, rows, take
from shardmill.wire.spec import ScanShard

_MIX = np.uint64(0x100000001B3)


def run_stage(task: dict[str, Any], *, registry: Registry) -> dict[str, Any]:
    """Run one stage shard; returns where its output went (or the output itself)."""
    where = f"stage {task['stage']} shard {task['shard']}"
    table, fetched = _input(task, where)
    for step in task["ops"]:
        table = _apply(step, table, registry, where)
    result = _output(task, table, where)
    result["fetched"] = fetched
    return result


# ---- input ---------------------------------------------------------------------------------


def _input(task: dict[str, Any], where: str) -> tuple[Table, int]:
    spec = task["input"]
    if spec["kind"] == "scan":
        return _scan(spec, where), 0
    if spec["kind"] == "table":
        return check_table(spec["table"], where), 0
    parents = [
        fetch([Piece(**p) for p in pieces], task["token"], float(task["fetch_timeout"]))
        for pieces in spec["parents"]
    ]
    fetched = sum(nbytes(t) for tables in parents for t in tables)
    sides = [concat(tables, where) for tables in parents]
    return _combine(spec, sides, where), fetched


def _scan(spec: dict[str, Any], where: str) -> Table:
    desc = ScanShard.model_validate(spec["source"])
    names: list[str] = spec["names"]
    cols: list[list[np.ndarray]] = [[] for _ in names]
    for chunk in iter_chunks(desc):
        for i in range(len(names)):
            cols[i].append(np.asarray(chunk.column(i)))
    return {n: np.concatenate(c) if c else np.zeros(0) for n, c in zip(names, cols, strict=True)}


def _combine(spec: dict[str, Any], sides: list[Table], where: str) -> Table:
    how = spec["combine"]
    if how == "agg":
        agg = spec["agg"]
        return aggregate.merge(sides[0], agg["keys"], [tuple(a) for a in agg["aggs"]], where)
    if how == "sort":
        table = sides[0]
        if not table:
            return table
        order = np.argsort(table[spec["key"]], kind="stable")  # checked on the map side
        if spec.get("descending"):
            order = order[::-1]
        return take(table, order)
    if how == "join":
        return joins.join(sides[0], sides[1], on=spec["on"], how=spec["how"], where=where)
    return sides[0]  # a repartition: the rows, together


# ---- narrow steps ----------------------------------------------------------------------------


def _apply(step: dict[str, Any], table: Table, registry: Registry, where: str) -> Table:
    fn: Callable[[Table], Any] = registry.resolve(step["fn"])
    what = f"{where}: {step['op']}({step['fn']})"
    if step["op"] == "filter":
        keep = np.asarray(fn(table))
        if keep.dtype != np.bool_ or keep.shape != (rows(table),):
            raise BadInput(
                f"{what} returned {keep.dtype} of shape {keep.shape}; a filter returns "
                f"a bool array with one value per row ({rows(table)})"
            )
        return take(table, keep)
    return check_table(fn(table), what)


# ---- output ----------------------------------------------------------------------------------


def _output(task: dict[str, Any], table: Table, where: str) -> dict[str, Any]:
    out = task["output"]
    kind = out["kind"]
    if kind == "collect":
        return {"table": table, "rows": rows(table)}
    if kind == "write":
        return _write(out, table, task["shard"], where)
    if kind == "hash":
        if out.get("agg"):
            agg = out["agg"]
            table = aggregate.partial(table, agg["keys"], [tuple(a) for a in agg["aggs"]], where)
        return _spill_hashed(task, table, out, where)
    return _spill_sorted(task, table, out, where)


def _spill_hashed(
    task: dict[str, Any], table: Table, out: dict[str, Any], where: str
) -> dict[str, Any]:
    parts = int(out["partitions"])
    keys = key_columns(table, out["keys"], where) if table else []
    if keys:
        h = stable_hash(keys[0])
        for col in keys[1:]:
            h = (h * _MIX) ^ stable_hash(col)
        part = (h % np.uint64(parts)).astype(np.int64)
    else:
        part = np.zeros(rows(table), dtype=np.int64)
    order = np.argsort(part, kind="stable")
    counts = np.bincount(part, minlength=parts)
    offsets = [0, *np.cumsum(counts).tolist()]
    return _spill(task, take(table, order), {"offsets": offsets}, where) | {
        "sizes": counts.tolist()
    }


def _spill_sorted(
    task: dict[str, Any], table: Table, out: dict[str, Any], where: str
) -> dict[str, Any]:
    key = out["key"]
    if table:
        col = _sort_column(table, key, where)
        table = take(table, np.argsort(col, kind="stable"))
        n = len(col)
        picks = np.linspace(0, n - 1, num=min(n, int(out["samples"]))).astype(np.int64)
        sample = table[key][picks] if n else col[:0]
    else:
        sample = np.zeros(0)
    return _spill(task, table, {"offsets": None, "key": key}, where) | {"sample": sample}


def _sort_column(table: Table, key: str, where: str) -> np.ndarray:
    if key not in table:
        key_columns(table, [key], where)  # raises, naming the missing column
    col = table[key]
    if col.dtype.kind not in "biufUS":
        raise BadInput(
            f"{where}: sort column {key!r} has dtype {col.dtype}; sort by numbers or strings"
        )
    return col


def _spill(task: dict[str, Any], table: Table, meta: dict[str, Any], where: str) -> dict[str, Any]:
    root = Path(os.environ.get("SHARDMILL_SHUFFLE_DIR", ""))
    holder = os.environ.get("SHARDMILL_SHUFFLE_ADDR", "")
    if not holder or not root.name:
        raise BadInput(
            f"{where}: this worker serves no shuffle (it predates pipelines, or its "
            "piece server failed to start: see its log); upgrade or restart it"
        )
    out_id = f"s{task['stage']}-{task['shard']}-{uuid.uuid4().hex[:12]}"
    written = write_output(root, task["token"], out_id, table, meta)
    return {
        "out": out_id,
        "holder": holder,
        "key": os.environ.get("SHARDMILL_SHUFFLE_PUBLIC", ""),
        "rows": rows(table),
        "bytes": written,
    }


def _write(out: dict[str, Any], table: Table, shard: int, where: str) -> dict[str, Any]:
    directory = Path(out["path"])
    path = directory / f"part-{shard:05d}.npz"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".part-{shard:05d}.{uuid.uuid4().hex[:8]}.npz"
        np.savez(tmp, **table)  # type: ignore[arg-type]
        tmp.replace(path)
    except OSError as e:
        raise BadInput(
            f"{where}: cannot write {path}: {e.strerror or e}; check the output "
            "directory is on a disk every worker can write",
            retryable=True,
        ) from e
    return {"files": [str(path)], "rows": rows(table)}
