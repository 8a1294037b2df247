"""Per-column count, sum, mean, std, min and max, merged with Chan et al.'s pairwise formula."""

from __future__ import annotations

from typing import Any

import numpy as np

from shardmill.ops.base import Block, OpTraits, as_matrix, is_empty
from shardmill.ops.columnwise import merge_columns
from shardmill.protocol import OpOptions

FIELDS = ("rows", "n", "sum", "mean", "m2", "min", "max")


class ColumnStats:
    name = "column_stats"
    traits = OpTraits()

    def check_dtype(self, dtype: np.dtype[Any]) -> str | None:
        if dtype.kind not in "biuf":
            return f"column_stats needs a numeric dtype (bool, int, uint, float), got {dtype}"
        return None

    def run(self, rows: np.ndarray) -> dict[str, Any]:
        """The partial of a plain array (every column): for one-process use and benchmarks."""
        block = rows[:, None] if rows.ndim == 1 else rows
        return self.map(Block(block, np.arange(block.shape[1])), OpOptions())

    def map(self, block: Block, options: OpOptions) -> dict[str, Any]:
        x = as_matrix(block)
        if options.nan_aware:
            valid = ~np.isnan(x)
            n = valid.sum(axis=0)
            total = np.where(valid, x, 0.0).sum(axis=0)
            mean = np.divide(total, n, out=np.zeros_like(total), where=n > 0)
            m2 = np.where(valid, (x - mean) ** 2, 0.0).sum(axis=0)
            low = np.fmin.reduce(x, axis=0, initial=np.inf)
            high = np.fmax.reduce(x, axis=0, initial=-np.inf)
        else:
            n = np.full(x.shape[1], x.shape[0], dtype=np.int64)
            total = x.sum(axis=0)
            mean = total / max(1, x.shape[0])
            # Two-pass within the shard (numerically stable); Chan's formula merges the shards.
            m2 = ((x - mean) ** 2).sum(axis=0)
            low = np.minimum.reduce(x, axis=0, initial=np.inf)
            high = np.maximum.reduce(x, axis=0, initial=-np.inf)
        rows = np.full(x.shape[1], x.shape[0], dtype=np.int64)
        return {
            "cols": block.columns,
            "rows": rows,
            "n": n.astype(np.int64),
            "sum": total,
            "mean": mean,
            "m2": m2,
            "min": low,
            "max": high,
        }

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return merge_columns(a, b, FIELDS, _chan)

    def finalize(self, acc: dict[str, Any]) -> dict[str, Any]:
        if is_empty(acc):
            return {"count": 0}
        rows, n = np.asarray(acc["rows"]), np.asarray(acc["n"])
        empty = n == 0
        var = np.where(empty, np.nan, np.asarray(acc["m2"]) / np.maximum(n, 1))
        return {
            "count": int(rows[0]) if rows.size and (rows == rows[0]).all() else rows,
            "valid": n,
            "sum": np.asarray(acc["sum"]),
            "mean": np.where(empty, np.nan, acc["mean"]),
            "var": var,
            "std": np.sqrt(var),
            "min": np.where(empty, np.nan, acc["min"]),
            "max": np.where(empty, np.nan, acc["max"]),
            "columns": np.asarray(acc["cols"]),
        }


def _chan(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    na, nb = np.asarray(a["n"]), np.asarray(b["n"])
    n = na + nb
    share = np.divide(nb, n, out=np.zeros(n.shape), where=n > 0)  # nb / n
    delta = np.asarray(b["mean"]) - np.asarray(a["mean"])
    return {
        "rows": np.asarray(a["rows"]) + np.asarray(b["rows"]),
        "n": n,
        "sum": np.asarray(a["sum"]) + np.asarray(b["sum"]),
        "mean": np.asarray(a["mean"]) + delta * share,
        "m2": np.asarray(a["m2"]) + np.asarray(b["m2"]) + delta**2 * na * share,
        "min": np.minimum(a["min"], b["min"]),
        "max": np.maximum(a["max"], b["max"]),
    }
