"""Per-column counts in fixed bins over [lo, hi], like np.histogram; out-of-range counted apart."""

from __future__ import annotations

from typing import Any

import numpy as np

from shardmill.ops.base import Block, OpTraits, as_matrix, is_empty
from shardmill.ops.columnwise import merge_columns
from shardmill.wire.spec import OpOptions

FIELDS = ("counts", "below", "above", "nan")


class Histogram:
    name = "histogram"
    traits = OpTraits(value_range=True)

    def map(self, block: Block, options: OpOptions) -> dict[str, Any]:
        if options.value_range is None:
            raise ValueError("histogram needs value_range=(lo, hi); the planner sets it")
        lo, hi = options.value_range
        edges = np.linspace(lo, hi, options.bins + 1)
        x = as_matrix(block)
        k = x.shape[1]
        nan = np.isnan(x)
        below, above = x < lo, x > hi
        inside = ~(nan | below | above)
        index = _bin_index(np.where(inside, x, lo), edges)
        flat = (np.arange(k)[None, :] * options.bins + index)[inside]
        counts = np.bincount(flat, minlength=k * options.bins).reshape(k, options.bins)
        return {
            "cols": block.columns,
            "edges": edges,
            "counts": counts.astype(np.int64),
            "below": below.sum(axis=0).astype(np.int64),
            "above": above.sum(axis=0).astype(np.int64),
            "nan": nan.sum(axis=0).astype(np.int64),
        }

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return merge_columns(a, b, FIELDS, _add)

    def finalize(self, acc: dict[str, Any]) -> dict[str, Any]:
        if is_empty(acc):
            return {"count": 0}
        out = {f: np.asarray(acc[f]) for f in FIELDS}
        return {**out, "edges": np.asarray(acc["edges"]), "columns": np.asarray(acc["cols"])}


def _bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # The same arithmetic and edge corrections as np.histogram, so counts match it exactly.
    bins = edges.size - 1
    lo, hi = edges[0], edges[-1]
    index = (((x - lo) / (hi - lo)) * bins).astype(np.intp)
    index[index == bins] -= 1
    index -= x < edges[index]
    index += (x >= edges[np.minimum(index + 1, bins)]) & (index != bins - 1)
    clipped: np.ndarray = np.clip(index, 0, bins - 1)
    return clipped


def _add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {f: np.asarray(a[f]) + np.asarray(b[f]) for f in FIELDS}
