"""Per-row mean, std, min and max: one output row per input row, written where it belongs.

The master creates the output .npy (rows x 4, float64) before any shard runs; each shard
writes its own rows into it through a memory map. Writing the same rows twice writes the same
values, so a shard that runs again is harmless, and the master never holds the output.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from shardmill.errors import BadInput
from shardmill.ops.base import Block, OpTraits, as_matrix, is_empty
from shardmill.wire.spec import OpOptions

COLUMNS = ("mean", "std", "min", "max")
_OUTPUTS: dict[tuple[str, int], np.memmap[Any, Any]] = {}
MAX_OUTPUTS = 8


class RowStats:
    name = "row_stats"
    traits = OpTraits(strategies=frozenset({"rows"}), ordered_output=True)

    def map(self, block: Block, options: OpOptions) -> dict[str, Any]:
        if options.output is None or block.first_row < 0:
            raise ValueError("row_stats needs an output path and rows with known positions")
        stats = row_stats(as_matrix(block), nan_aware=options.nan_aware)
        out = open_output(options.output)
        stop = block.first_row + block.rows
        if stop > out.shape[0]:
            raise BadInput(f"{options.output} has {out.shape[0]} rows; rows up to {stop} needed")
        out[block.first_row : stop] = stats
        out.flush()  # on shared storage the rows must be there before the master says done
        return {"count": block.rows, "output": options.output}

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if is_empty(b):
            return a
        if is_empty(a):
            return b
        return {"count": int(a["count"]) + int(b["count"]), "output": a["output"]}

    def finalize(self, acc: dict[str, Any]) -> dict[str, Any]:
        return {"output": acc.get("output"), "count": int(acc["count"]), "columns": list(COLUMNS)}


def row_stats(x: np.ndarray, *, nan_aware: bool) -> np.ndarray:
    """(rows x 4): mean, std, min, max of each row, as NumPy computes them."""
    if x.shape[0] == 0 or x.shape[1] == 0:
        return np.full((x.shape[0], 4), np.nan)
    if not nan_aware:
        return np.stack([x.mean(1), x.std(1), x.min(1), x.max(1)], axis=1)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row gives NaN, as it should
        return np.stack([np.nanmean(x, 1), np.nanstd(x, 1), np.nanmin(x, 1), np.nanmax(x, 1)], 1)


def open_output(path: str) -> np.memmap[Any, Any]:
    """The output as a writable memory map, once per process (per file, as the master made it)."""
    try:
        inode = os.stat(path).st_ino
        key = (path, inode)
        if key not in _OUTPUTS:
            if len(_OUTPUTS) >= MAX_OUTPUTS:  # one per job: forget the oldest
                del _OUTPUTS[next(iter(_OUTPUTS))]
            _OUTPUTS[key] = np.load(path, mmap_mode="r+", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BadInput(f"row_stats output {path} cannot be opened: {e}", retryable=True) from e
    return _OUTPUTS[key]
