"""Per-column count, sum, mean, std, min and max, merged with Chan et al.'s pairwise formula."""

from __future__ import annotations

from typing import Any

import numpy as np


class ColumnStats:
    name = "column_stats"

    def check_dtype(self, dtype: np.dtype[Any]) -> str | None:
        if dtype.kind not in "biuf":
            return f"column_stats needs a numeric dtype (bool, int, uint, float), got {dtype}"
        return None

    def run(self, rows: np.ndarray) -> dict[str, Any]:
        block = np.asarray(rows, dtype=np.float64)
        if block.ndim == 1:
            block = block[:, None]
        n = int(block.shape[0])
        if n == 0:
            return {"count": 0}
        mean = block.mean(axis=0)
        # Two-pass within the shard (numerically stable); Chan's formula merges the shards.
        m2 = ((block - mean) ** 2).sum(axis=0)
        return {
            "count": n,
            "sum": block.sum(axis=0),
            "mean": mean,
            "m2": m2,
            "min": block.min(axis=0),
            "max": block.max(axis=0),
        }

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        na, nb = int(a["count"]), int(b["count"])
        if nb == 0:
            return a
        if na == 0:
            return b
        n = na + nb
        delta = np.asarray(b["mean"]) - np.asarray(a["mean"])
        return {
            "count": n,
            "sum": np.asarray(a["sum"]) + np.asarray(b["sum"]),
            "mean": np.asarray(a["mean"]) + delta * (nb / n),
            "m2": np.asarray(a["m2"]) + np.asarray(b["m2"]) + delta**2 * (na * nb / n),
            "min": np.minimum(a["min"], b["min"]),
            "max": np.maximum(a["max"], b["max"]),
        }

    def finalize(self, acc: dict[str, Any]) -> dict[str, Any]:
        n = int(acc["count"])
        if n == 0:
            return {"count": 0}
        var = np.asarray(acc["m2"]) / n
        return {
            "count": n,
            "sum": np.asarray(acc["sum"]),
            "mean": np.asarray(acc["mean"]),
            "var": var,
            "std": np.sqrt(var),
            "min": np.asarray(acc["min"]),
            "max": np.asarray(acc["max"]),
        }
