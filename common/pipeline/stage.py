"""One shard of a pipeline stage, run in a worker's child: rows flow from a source (a dataset
shard, tables by value, or the shard's partition fetched from peers) through the stage's
narrow steps to a sink (partitioned to this worker's shuffle directory for the next stage,
back to the client, or to files), a batch at a time under the shard's byte budget.

`map` and `filter` run per batch (as Ray's map_batches does); `map_partitions` gathers the
partition first. The same input gives the same bytes: partitions come from a stable hash of the
key's bytes, pieces are combined in map-shard order and sorts are stable, so a recomputed
output is byte-identical to the one it replaces.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from shardmill.errors import BadInput
from shardmill.ops.registry import Registry
from shardmill.pipeline import sinks, sources
from shardmill.pipeline.fetch import Piece, Streams
from shardmill.pipeline.tables import Table, check_table, concat, rows, take

DEFAULT_BUDGET = 256 << 20  # a task's shuffle memory when the worker does not say


def run_stage(task: dict[str, Any], *, registry: Registry) -> dict[str, Any]:
    """Run one stage shard; returns where its output went (or the output itself)."""
    where = f"stage {task['stage']} shard {task['shard']}"
    if task.get("absorb") is not None:
        where = f"stage {task['stage']} partition {task['shard']} absorbing wave {task['absorb']}"
    budget = int(os.environ.get("SHARDMILL_SHUFFLE_MEMORY") or DEFAULT_BUDGET)
    task = {**task, "budget": budget}
    sink = _sink(task, budget, where)
    spec = task["input"]
    if spec["kind"] == "scan":
        result = _drain(sources.scanned(spec, budget // 8), task, sink, registry, where)
        return {**result, "fetched": 0}
    if spec["kind"] == "table":
        result = _drain(sources.by_value(spec, budget // 8, where), task, sink, registry, where)
        return {**result, "fetched": 0}
    pieces = [[Piece(**p) for p in side] for side in spec["parents"]]
    flat = [p for side in pieces for p in side]
    ids, at = [], 0
    for side in pieces:
        ids.append(list(range(at, at + len(side))))
        at += len(side)
    # Up to three pages a stream (in use, waiting, in flight): a quarter of the budget.
    page = budget // (12 * max(1, len(flat)))
    with Streams(flat, task["token"], float(task["fetch_timeout"]), page) as streams:
        rows_in = sources.shuffled(task, streams, ids, where)
        result = _drain(rows_in, task, sink, registry, where)
        return {**result, "fetched": streams.fetched}


def _drain(
    batches: Iterator[Table], task: dict[str, Any], sink: sinks.Sink, registry: Registry, where: str
) -> dict[str, Any]:
    for step in task["ops"]:
        batches = _step(step, batches, registry, where)
    for table in batches:
        sink.add(table)
    return sink.finish()


def _sink(task: dict[str, Any], budget: int, where: str) -> sinks.Sink:
    out = task["output"]
    spec = task["input"]
    reverse = spec.get("combine") == "sort" and bool(spec.get("descending"))
    if out["kind"] == "collect":
        return sinks.CollectSink(where, reverse=reverse)
    if out["kind"] == "write":
        return sinks.WriteSink(out["path"], task["shard"], budget, where, reverse=reverse)
    if out["kind"] == "hash":
        return sinks.HashSink(task, budget, where)
    if out["kind"] == "run":
        return sinks.RunSink(task, budget, where)
    return sinks.RangeSink(task, budget, where)


# ---- narrow steps ----------------------------------------------------------------------------


def _step(
    step: dict[str, Any], batches: Iterator[Table], registry: Registry, where: str
) -> Iterator[Table]:
    fn: Callable[[Table], Any] = registry.resolve(step["fn"])
    what = f"{where}: {step['op']}({step['fn']})"
    if step["op"] == "map_partitions":
        yield check_table(fn(concat(list(batches), what)), what)
        return
    for table in batches:
        if step["op"] == "filter":
            yield _kept(fn, table, what)
        else:
            yield check_table(fn(table), what)


def _kept(fn: Callable[[Table], Any], table: Table, what: str) -> Table:
    keep = np.asarray(fn(table))
    if keep.dtype != np.bool_ or keep.shape != (rows(table),):
        raise BadInput(
            f"{what} returned {keep.dtype} of shape {keep.shape}; a filter returns a bool "
            f"array with one value per row ({rows(table)})"
        )
    return take(table, keep)
