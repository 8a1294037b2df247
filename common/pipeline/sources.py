"""Where a stage shard's rows come from, a batch at a time: a dataset shard read in chunks,
tables sent by value, or the shard's partition fetched page by page from the peers holding the
stage before's outputs, then combined: concatenated, folded (group-by), joined, or merged in
key order (sort: a k-way merge of sorted runs, holding about a page per run)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from shardmill.data.readers import iter_chunks
from shardmill.pipeline import aggregate, joins
from shardmill.pipeline.fetch import Streams
from shardmill.pipeline.tables import Table, check_table, concat, nbytes, rows, take
from shardmill.wire.spec import ScanShard


def batches(table: Table, batch_bytes: int) -> Iterator[Table]:
    """`table` cut into batches of about `batch_bytes`."""
    n = rows(table)
    if not n:
        return
    step = max(1, batch_bytes // max(1, nbytes(table) // n))
    for a in range(0, n, step):
        yield {k: v[a : a + step] for k, v in table.items()}


def scanned(spec: dict[str, Any], batch_bytes: int) -> Iterator[Table]:
    """A dataset shard, chunk by chunk as its format reads it, its columns named."""
    desc = ScanShard.model_validate(spec["source"])
    names: list[str] = spec["names"]
    for chunk in iter_chunks(desc):
        table = {n: np.asarray(chunk.column(i)) for i, n in enumerate(names)}
        yield from batches(table, batch_bytes)


def by_value(spec: dict[str, Any], batch_bytes: int, where: str) -> Iterator[Table]:
    yield from batches(check_table(spec["table"], where), batch_bytes)


def shuffled(
    task: dict[str, Any], streams: Streams, sides: list[list[int]], where: str
) -> Iterator[Table]:
    """The partition's rows from the stage(s) before, combined as the stage says."""
    spec = task["input"]
    how = spec["combine"]
    if how == "agg":
        folded = _folded(spec["agg"], streams, sides[0], task["budget"], where)
        if folded is not None:  # absorbing a wave: the partials, folded; else the aggregates
            keys, aggs = spec["agg"]["keys"], [tuple(a) for a in spec["agg"]["aggs"]]
            yield folded if spec.get("partial") else aggregate.finish(folded, keys, aggs)
    elif how == "sort":
        for table in merged(streams, sides[0], spec["key"]):
            yield take(table, np.arange(rows(table))[::-1]) if spec["descending"] else table
    elif how == "join":
        left = concat([p for i in sides[0] for p in streams.whole(i)], where)
        right = concat([p for i in sides[1] for p in streams.whole(i)], where)
        yield joins.join(left, right, on=spec["on"], how=spec["how"], where=where)
    else:  # a repartition: the rows, in map-shard order
        for i in sides[0]:
            yield from streams.whole(i)


def _folded(
    agg: dict[str, Any], streams: Streams, ids: list[int], budget: int, where: str
) -> Table | None:
    """Partial aggregates folded as pages arrive: memory holds one row per key seen so far
    and a few pages, never the partition's partial rows all at once."""
    keys, aggs = agg["keys"], [tuple(a) for a in agg["aggs"]]
    acc: list[Table] = []
    held = 0
    for i in ids:
        for page in streams.whole(i):
            acc.append(page)
            held += nbytes(page)
            if held > budget // 4 and len(acc) > 1:
                folded = aggregate.fold(concat(acc, where), keys, aggs, where)
                acc, held = [folded], nbytes(folded)
    table = concat(acc, where)
    return aggregate.fold(table, keys, aggs, where) if table else None


def merged(streams: Streams, ids: list[int], key: str) -> Iterator[Table]:
    """Rows of streams each sorted by `key`, in one sorted order; equal keys in stream order
    whatever the page size (so a recomputed partition is byte-identical)."""
    bufs: list[Table] = [{} for _ in ids]
    while True:
        for k, i in enumerate(ids):
            if not rows(bufs[k]) and streams.more(i):
                bufs[k] = streams.next_page(i) or {}
        live = [k for k in range(len(ids)) if rows(bufs[k])]
        if not live:
            return
        bounded = [bufs[k][key][-1] for k in live if streams.more(ids[k])]
        cutoff = min(bounded) if bounded else None
        counts = [_below(bufs[k], key, cutoff) for k in range(len(ids))]
        if not any(counts):  # every row left is the cutoff key: read on past it
            for k in live:
                if streams.more(ids[k]) and bufs[k][key][-1] == cutoff:
                    bufs[k] = concat([bufs[k], streams.next_page(ids[k]) or {}], "merge")
            continue
        pieces = [{c: v[:n] for c, v in bufs[k].items()} for k, n in enumerate(counts) if n]
        bufs = [
            {c: v[n:] for c, v in b.items()} if n else b for b, n in zip(bufs, counts, strict=True)
        ]
        table = concat(pieces, "merge")
        yield take(table, np.argsort(table[key], kind="stable"))


def _below(buf: Table, key: str, cutoff: Any) -> int:
    """Rows of `buf` before `cutoff` (all of them when there is none)."""
    if not rows(buf):
        return 0
    return rows(buf) if cutoff is None else int(np.searchsorted(buf[key], cutoff, "left"))
