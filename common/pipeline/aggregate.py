"""Group-by aggregation in two steps, MapReduce's combiner: each map shard folds its rows to one
partial row per key before the shuffle (so a key seen a million times in a shard crosses the
network once), and the reduce side folds the partials and finalizes (a mean from sum and count).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shardmill.errors import BadInput
from shardmill.pipeline.tables import Table, composite, groups, key_columns, require_columns

FUNCTIONS = ("sum", "count", "mean", "min", "max")
# What each aggregate keeps between the two steps, and how partials of it fold.
_PARTS = {
    "sum": ("sum",),
    "count": ("count",),
    "mean": ("sum", "count"),
    "min": ("min",),
    "max": ("max",),
}
_FOLD = {"sum": np.add, "count": np.add, "min": np.minimum, "max": np.maximum}

Agg = tuple[str, str, str]  # (output name, column, function)


def check_aggs(keys: Sequence[str], aggs: Sequence[Agg]) -> None:
    """Refuse an unknown function or a name used twice, naming the fix (at the client)."""
    seen = set(keys)
    for name, column, fn in aggs:
        if fn not in FUNCTIONS:
            raise ValueError(
                f"agg {name}=({column!r}, {fn!r}): unknown function; use one of "
                f"{', '.join(FUNCTIONS)}"
            )
        if name in seen:
            raise ValueError(
                f"agg {name!r}: the name is used twice (keys and aggregates need distinct names)"
            )
        seen.add(name)


def _part_name(name: str, part: str) -> str:
    return f"{name}.{part}"


def partial(table: Table, keys: Sequence[str], aggs: Sequence[Agg], where: str) -> Table:
    """The map side: one row per distinct key of `table` with each aggregate's parts."""
    key_cols = key_columns(table, keys, where)
    require_columns(table, [column for _, column, _ in aggs], where)
    order, starts, first = groups(composite(key_cols))
    out: Table = {k: col[first] for k, col in zip(keys, key_cols, strict=True)}
    counts = np.diff(np.append(starts, len(order))).astype(np.int64)
    for name, column, fn in aggs:
        values = table[column][order]
        if fn != "count" and values.dtype.kind not in "biuf":
            raise BadInput(
                f"{where}: column {column!r} ({values.dtype}) cannot be summed or "
                f"compared for {name}={fn}; aggregate a numeric column"
            )
        for part in _PARTS[fn]:
            if part == "count":
                out[_part_name(name, part)] = counts
            elif len(values) == 0:
                out[_part_name(name, part)] = values[:0].astype(_wide(values.dtype))
            else:
                folded = _FOLD[part].reduceat(values.astype(_wide(values.dtype)), starts)
                out[_part_name(name, part)] = folded
    return out


def _wide(dtype: np.dtype) -> np.dtype:
    """Sums of integers in int64 (exact), of floats in float64."""
    if dtype.kind in "biu":
        return np.dtype(np.int64)
    return np.dtype(np.float64)


def fold(table: Table, keys: Sequence[str], aggs: Sequence[Agg], where: str) -> Table:
    """Partial rows of the same key folded into one (still partial: fold again or finish)."""
    key_cols = key_columns(table, keys, where)
    order, starts, first = groups(composite(key_cols))
    out: Table = {k: col[first] for k, col in zip(keys, key_cols, strict=True)}
    for name, _, fn in aggs:
        for part in _PARTS[fn]:
            col = _part_name(name, part)
            values = table[col][order]
            out[col] = _FOLD[part].reduceat(values, starts) if len(values) else values
    return out


def finish(folded: Table, keys: Sequence[str], aggs: Sequence[Agg]) -> Table:
    """The aggregates from fully folded partial rows (a mean from its sum and count)."""
    out: Table = {k: folded[k] for k in keys}
    for name, _, fn in aggs:
        if fn == "mean":
            total, n = folded[_part_name(name, "sum")], folded[_part_name(name, "count")]
            out[name] = total.astype(np.float64) / np.maximum(n, 1)
        else:
            out[name] = folded[_part_name(name, fn)]
    return out
