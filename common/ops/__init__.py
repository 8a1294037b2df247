"""Operations over datasets: a worker-side `map` per block, an associative `combine`, `finalize`."""

from __future__ import annotations

from shardmill.errors import UnknownFunction
from shardmill.ops.base import Block, DatasetOp, OpTraits
from shardmill.ops.column_stats import ColumnStats
from shardmill.ops.groupby import GroupBy
from shardmill.ops.histogram import Histogram
from shardmill.ops.registry import NO_MODULES, Registry
from shardmill.ops.row_stats import RowStats
from shardmill.ops.sum_count import SumCount
from shardmill.ops.user import UserOp, user_op
from shardmill.ops.value_counts import ValueCounts

BUILTIN_OPS: dict[str, DatasetOp] = {
    op.name: op
    for op in (ColumnStats(), RowStats(), Histogram(), SumCount(), ValueCounts(), GroupBy())
}
MAP_OP = "map"


def get_op(name: str, registry: Registry = NO_MODULES) -> DatasetOp:
    """A built-in op by name, or a user op "pkg.mod:name" from the registry's modules;
    KeyError names the ones that exist."""
    if ":" in name:
        try:
            return user_op(name, registry)
        except UnknownFunction as e:
            raise KeyError(str(e)) from None
    try:
        return BUILTIN_OPS[name]
    except KeyError:
        known = ", ".join(sorted([MAP_OP, *BUILTIN_OPS]))
        raise KeyError(
            f"unknown op {name!r}; known ops: {known}, or a user op as 'pkg.module:name'"
        ) from None


__all__ = [
    "BUILTIN_OPS",
    "MAP_OP",
    "Block",
    "DatasetOp",
    "OpTraits",
    "Registry",
    "UserOp",
    "get_op",
]
