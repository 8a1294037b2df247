"""Per-column sum and count (of the values summed: NaNs are skipped when nan_aware)."""

from __future__ import annotations

from typing import Any

import numpy as np

from shardmill.ops.base import Block, OpTraits, is_empty
from shardmill.ops.columnwise import merge_columns
from shardmill.wire.spec import OpOptions

FIELDS = ("sum", "count")


class SumCount:
    name = "sum_count"
    traits = OpTraits()

    def map(self, block: Block, options: OpOptions) -> dict[str, Any]:
        x = np.asarray(block.values)
        # Integers sum exactly in int64 (uint64 for unsigned); floats in float64.
        wide = (
            np.float64 if x.dtype.kind == "f" else (np.uint64 if x.dtype.kind == "u" else np.int64)
        )
        if options.nan_aware and x.dtype.kind == "f":
            valid = ~np.isnan(x)
            total, count = np.where(valid, x, 0.0).sum(axis=0, dtype=wide), valid.sum(axis=0)
        else:
            total = x.sum(axis=0, dtype=wide)
            count = np.full(x.shape[1], x.shape[0])
        return {"cols": block.columns, "sum": total, "count": count.astype(np.int64)}

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return merge_columns(a, b, FIELDS, _add)

    def finalize(self, acc: dict[str, Any]) -> dict[str, Any]:
        if is_empty(acc):
            return {"count": 0}
        return {"sum": acc["sum"], "count": acc["count"], "columns": acc["cols"]}


def _add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {f: np.asarray(a[f]) + np.asarray(b[f]) for f in FIELDS}
