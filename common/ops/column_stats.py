"""Per-column count, sum, mean, std, min and max, merged with Chan et al.'s pairwise formula."""

from __future__ import annotations

from typing import Any

import numpy as np

from shardmill.ops.base import Block, OpTraits, as_matrix, is_empty
from shardmill.ops.columnwise import merge_columns
from shardmill.wire.spec import OpOptions

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
            total, mean, m2, low, high = moments(x)
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


def moments(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sum, mean, M2 (sum of squared deviations), min and max of each column of a 2-D array.

    Numerically the plain two-pass method, but run over cache-sized blocks of rows, each one
    viewed as (rows / g, g * columns) so every ufunc's inner loop is long (NumPy reduces a
    10-column array along axis 0 ten elements at a time otherwise): 4-5x faster. The blocks'
    M2s are joined with the parallel-axis formula, which is exact.
    """
    rows, cols = x.shape
    total, low, high = np.zeros(cols), np.full(cols, np.inf), np.full(cols, -np.inf)
    if rows == 0:
        return total, np.zeros(cols), np.zeros(cols), low, high
    group = max(1, -(-_INNER // cols))
    step = max(group, (_BLOCK_BYTES // (8 * cols)) // group * group)
    sums, sqs, sizes = [], [], []
    scratch = np.empty(min(rows, step) * cols)
    for start in range(0, rows, step):
        block = x[start : start + step]
        whole = block.shape[0] // group * group
        for part, g in ((block[:whole], group), (block[whole:], 1)):
            if part.shape[0]:
                s, q, lo, hi = _block_moments(part, g, scratch)
                sums.append(s)
                sqs.append(q)
                sizes.append(part.shape[0])
                np.minimum(low, lo, out=low)
                np.maximum(high, hi, out=high)
    block_sums, counts = np.array(sums), np.array(sizes, dtype=np.float64)[:, None]
    total = block_sums.sum(axis=0)
    mean = total / rows
    m2 = np.sum(sqs, axis=0) + (counts * (block_sums / counts - mean) ** 2).sum(axis=0)
    return total, mean, m2, low, high


_INNER = 512  # elements in a ufunc's inner loop at least
_BLOCK_BYTES = 1 << 20  # rows per block: about 1 MiB, so the second pass reads from cache


def _block_moments(
    block: np.ndarray, group: int, scratch: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = block.shape
    wide = np.ascontiguousarray(block).reshape(rows // group, group * cols)
    fold = (group, cols)
    s = wide.sum(axis=0).reshape(fold).sum(axis=0)
    low = wide.min(axis=0).reshape(fold).min(axis=0)
    high = wide.max(axis=0).reshape(fold).max(axis=0)
    d = scratch[: wide.size].reshape(wide.shape)
    np.subtract(wide, np.tile(s / rows, group), out=d)
    np.multiply(d, d, out=d)
    return s, d.sum(axis=0).reshape(fold).sum(axis=0), low, high


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
