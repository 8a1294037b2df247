"""Tables as pipelines move them: a dict of equal-length 1-D NumPy arrays, one per column.

Every check here names the stage, the shard and the column, so a bad table from a user's
function is one clear line, not a traceback from deep inside a shuffle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shardmill.errors import BadInput

Table = dict[str, np.ndarray]
KEY_KINDS = "biuUS"  # integers, bools, fixed-width strings and bytes (floats are not keys)


def check_table(value: Any, where: str) -> Table:
    """`value` as a Table, or BadInput naming what is wrong with it and the fix."""
    if not isinstance(value, Mapping):
        raise BadInput(
            f"{where}: returned {type(value).__name__}, not a table; return a dict of "
            "equal-length 1-D NumPy arrays, one per column"
        )
    table: Table = {}
    for name, col in value.items():
        if not isinstance(name, str):
            raise BadInput(f"{where}: column name {name!r} is not a string")
        arr = np.asarray(col)
        if arr.ndim != 1:
            raise BadInput(f"{where}: column {name!r} has shape {arr.shape}; columns are 1-D")
        if arr.dtype.hasobject:
            arr = _objects_as_str(arr, name, where)
        table[name] = arr
    lengths = {name: len(col) for name, col in table.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{n}={k}" for n, k in lengths.items())
        raise BadInput(
            f"{where}: columns of unequal length ({shown}); every column needs one value per row"
        )
    return table


def _objects_as_str(arr: np.ndarray, name: str, where: str) -> np.ndarray:
    if all(isinstance(v, str) for v in arr.tolist()):
        return arr.astype(str)
    raise BadInput(
        f"{where}: column {name!r} holds Python objects (dtype object); use numbers or "
        "fixed-width strings (np.array([...], dtype=str))"
    )


def rows(table: Table) -> int:
    return len(next(iter(table.values()))) if table else 0


def nbytes(table: Table) -> int:
    return sum(int(col.nbytes) for col in table.values())


def take(table: Table, index: np.ndarray) -> Table:
    return {name: col[index] for name, col in table.items()}


def concat(tables: Sequence[Table], where: str) -> Table:
    """Rows of `tables` one after the other; every table must have the same columns."""
    tables = [t for t in tables if t]
    if not tables:
        return {}
    names = list(tables[0])
    for t in tables[1:]:
        if list(t) != names:
            raise BadInput(f"{where}: pieces with different columns ({names} and {list(t)})")
    return {n: np.concatenate([t[n] for t in tables]) for n in names}


def key_columns(table: Table, keys: Sequence[str], where: str) -> list[np.ndarray]:
    """The key columns, checked: present, and of a type that can be a key."""
    out = []
    for key in keys:
        if key not in table:
            have = ", ".join(table) or "none"
            raise BadInput(f"{where}: key column {key!r} is missing (columns: {have})")
        col = table[key]
        if col.dtype.kind not in KEY_KINDS:
            raise BadInput(
                f"{where}: key column {key!r} has dtype {col.dtype}, which cannot be a key; "
                "use integers or strings (round or cast floats first)"
            )
        out.append(col)
    return out


def composite(cols: Sequence[np.ndarray]) -> np.ndarray:
    """One sortable array for one or more key columns (a structured array for several)."""
    if len(cols) == 1:
        return cols[0]
    out: np.ndarray = np.rec.fromarrays(  # type: ignore[call-overload]
        list(cols), names=[f"k{i}" for i in range(len(cols))]
    )
    return out


def groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, starts, first) for grouping `keys`: the rows sorted by key (stable), where each
    group starts in that order, and the row index of each group's first row."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    if len(ordered) == 0:
        return order, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    change = np.ones(len(ordered), dtype=bool)
    change[1:] = ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(change)
    return order, starts, order[starts]


def require_columns(table: Table, names: Sequence[str], where: str) -> None:
    for name in names:
        if name not in table:
            have = ", ".join(table) or "none"
            raise BadInput(f"{where}: column {name!r} is missing (columns: {have})")
