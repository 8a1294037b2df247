"""Joining two partitions of tables on one key column: inner, or left (every left row kept).

Both sides were shuffled by the same stable hash of the key, so matching rows meet in the same
partition. Many-to-many matches are expanded in full. A left row without a match gets nulls on
the right: NaN for numbers (integer columns become float64), "" for strings, b"" for bytes.
"""

from __future__ import annotations

import numpy as np

from shardmill.errors import BadInput
from shardmill.pipeline.tables import Table, key_columns, rows, take

HOWS = ("inner", "left")


def join(left: Table, right: Table, *, on: str, how: str, where: str) -> Table:
    """`left` joined with `right` on column `on`; left rows in their order, each followed by
    its matches in the right's order."""
    if not left:
        return {}
    (lkey,) = key_columns(left, [on], f"{where} (left side)")
    if not right:
        right = {on: lkey[:0]}
    (rkey,) = key_columns(right, [on], f"{where} (right side)")
    if (lkey.dtype.kind in "US") != (rkey.dtype.kind in "US"):
        raise BadInput(
            f"{where}: key {on!r} is {lkey.dtype} on the left and {rkey.dtype} on "
            "the right; cast one side so both are numbers or both strings"
        )
    rorder = np.argsort(rkey, kind="stable")
    rsorted = rkey[rorder]
    lo = np.searchsorted(rsorted, lkey, side="left")
    n = np.searchsorted(rsorted, lkey, side="right") - lo
    emit = np.maximum(n, 1) if how == "left" else n
    li = np.repeat(np.arange(len(lkey)), emit)
    within = np.arange(int(emit.sum())) - np.repeat(np.cumsum(emit) - emit, emit)
    matched = np.repeat(n > 0, emit)
    pos = np.repeat(lo, emit) + within
    ri = rorder[np.where(matched, pos, 0)] if rows(right) else np.zeros(len(li), dtype=np.int64)
    out = take(left, li)
    for name, col in right.items():
        if name == on:
            continue
        target = f"{name}_right" if name in out else name
        values = col[ri] if len(col) else np.zeros(len(ri), dtype=col.dtype)
        out[target] = values if how == "inner" else _with_nulls(values, matched)
    return out


def _with_nulls(values: np.ndarray, matched: np.ndarray) -> np.ndarray:
    if matched.all():
        return values
    if values.dtype.kind in "US":
        return np.where(matched, values, values.dtype.type())
    out = values.astype(np.float64)
    out[~matched] = np.nan
    return out
