"""How often each key occurs. With hash partitioning each key is counted in one shard only."""

from __future__ import annotations

from typing import Any

import numpy as np

from shardmill.ops.base import KEYED_STRATEGIES, Block, OpTraits, is_empty
from shardmill.ops.grouping import group_starts, reduce_sorted
from shardmill.wire.spec import OpOptions


class ValueCounts:
    name = "value_counts"
    traits = OpTraits(needs_key=True, values="none", numeric=False, strategies=KEYED_STRATEGIES)

    def map(self, block: Block, options: OpOptions) -> dict[str, Any]:
        assert block.keys is not None, "the planner always sends a key for value_counts"
        keys, counts = np.unique(block.keys, return_counts=True)
        return {"keys": keys, "counts": counts.astype(np.int64)}

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if is_empty(b):
            return a
        if is_empty(a):
            return b
        keys = np.concatenate([np.asarray(a["keys"]), np.asarray(b["keys"])])
        counts = np.concatenate([np.asarray(a["counts"]), np.asarray(b["counts"])])
        uniq, order, starts = group_starts(keys)
        return {"keys": uniq, "counts": reduce_sorted(counts, order, starts, np.add)}

    def finalize(self, acc: dict[str, Any]) -> dict[str, Any]:
        if is_empty(acc):
            return {"keys": np.zeros(0), "counts": np.zeros(0, np.int64), "distinct": 0, "total": 0}
        counts = np.asarray(acc["counts"])
        return {
            "keys": np.asarray(acc["keys"]),
            "counts": counts,
            "distinct": int(counts.size),
            "total": int(counts.sum()),
        }
