"""Per key and value column: count, sum, mean, min and max.

With hash partitioning every key lives in exactly one shard, so each key's group is built and
merged once; with row shards a key's partial groups are combined as they arrive.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shardmill.ops.base import KEYED_STRATEGIES, Block, OpTraits, as_matrix, is_empty
from shardmill.ops.grouping import group_starts, reduce_sorted
from shardmill.wire.spec import OpOptions

REDUCERS: dict[str, np.ufunc] = {
    "count": np.add,
    "sum": np.add,
    "min": np.minimum,
    "max": np.maximum,
}


class GroupBy:
    name = "groupby"
    traits = OpTraits(needs_key=True, values="not_key", strategies=KEYED_STRATEGIES)

    def map(self, block: Block, options: OpOptions) -> dict[str, Any]:
        assert block.keys is not None, "the planner always sends a key for groupby"
        x = as_matrix(block)
        valid = ~np.isnan(x) if options.nan_aware else np.ones(x.shape, dtype=bool)
        fields = {
            "count": valid.astype(np.int64),
            "sum": np.where(valid, x, 0.0),
            # NaNs skipped under nan_aware become +-inf here and NaN again in finalize.
            "min": np.where(valid, x, np.inf),
            "max": np.where(valid, x, -np.inf),
        }
        return _reduce(block.keys, fields, block.columns)

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if is_empty(b):
            return a
        if is_empty(a):
            return b
        if not np.array_equal(a["cols"], b["cols"]):
            raise ValueError("groupby partials over different columns cannot be combined")
        keys = np.concatenate([np.asarray(a["keys"]), np.asarray(b["keys"])])
        fields = {f: np.concatenate([np.asarray(a[f]), np.asarray(b[f])]) for f in REDUCERS}
        return _reduce(keys, fields, np.asarray(a["cols"]))

    def finalize(self, acc: dict[str, Any]) -> dict[str, Any]:
        if is_empty(acc):
            return {"keys": np.zeros(0), "count": np.zeros((0, 0), np.int64)}
        count = np.asarray(acc["count"])
        empty = count == 0
        total = np.asarray(acc["sum"])
        return {
            "keys": np.asarray(acc["keys"]),
            "columns": np.asarray(acc["cols"]),
            "count": count,
            "sum": total,
            "mean": np.where(empty, np.nan, total / np.maximum(count, 1)),
            "min": np.where(empty, np.nan, acc["min"]),
            "max": np.where(empty, np.nan, acc["max"]),
        }


def _reduce(keys: np.ndarray, fields: dict[str, np.ndarray], cols: np.ndarray) -> dict[str, Any]:
    uniq, order, starts = group_starts(np.asarray(keys))
    out: dict[str, Any] = {"keys": uniq, "cols": cols}
    for name, ufunc in REDUCERS.items():
        out[name] = reduce_sorted(fields[name], order, starts, ufunc)
    return out
