"""Built-in operations: a worker-side `run` per shard, an associative `combine`, a `finalize`."""

from __future__ import annotations

from shardmill.ops.base import DatasetOp
from shardmill.ops.column_stats import ColumnStats

BUILTIN_OPS: dict[str, DatasetOp] = {op.name: op for op in (ColumnStats(),)}
MAP_OP = "map"


def get_op(name: str) -> DatasetOp:
    """Look up a built-in dataset op by name; KeyError names the ones that exist."""
    try:
        return BUILTIN_OPS[name]
    except KeyError:
        known = ", ".join(sorted([MAP_OP, *BUILTIN_OPS]))
        raise KeyError(f"unknown op {name!r}; known ops: {known}") from None


__all__ = ["BUILTIN_OPS", "MAP_OP", "DatasetOp", "get_op"]
