"""Which columns a job reads (its key, its values, its column groups) and their dtype checks."""

from __future__ import annotations

from dataclasses import dataclass

from shardmill.data.base import Dataset
from shardmill.data.sharding import split_columns
from shardmill.errors import JobSpecError
from shardmill.ops import DatasetOp
from shardmill.wire.spec import JobSpec

NUMERIC = "biuf"


@dataclass(frozen=True)
class Selection:
    """The columns a job reads: its key, its value columns, and its column groups."""

    key: int | None
    values: list[int]
    groups: list[list[int]]


def column_index(ref: int | str, dataset: Dataset, field: str) -> int:
    """A column named by index or header name; JobSpecError lists the columns there are."""
    names = dataset.names
    if isinstance(ref, int) and 0 <= ref < len(names):
        return ref
    if isinstance(ref, str):
        if ref in names:
            return names.index(ref)
        if ref.isdigit() and int(ref) < len(names):
            return int(ref)
    shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
    raise JobSpecError(
        f"{field}: column {ref!r} does not exist in {dataset.label}; its columns are: {shown}"
    )


def select_columns(spec: JobSpec, op: DatasetOp, dataset: Dataset) -> Selection:
    key = None if spec.key is None else column_index(spec.key, dataset, "key")
    if key is None and (op.traits.needs_key or spec.strategy in ("hash", "range")):
        if op.traits.needs_key and len(dataset.names) == 1 and spec.strategy == "rows":
            key = 0  # 1-D data: the values are the keys
        else:
            who = f"strategy {spec.strategy!r}" if not op.traits.needs_key else op.name
            raise JobSpecError(
                f"key: {who} needs a key column; name one with key=... (--key), one of: "
                + ", ".join(dataset.names[:40])
            )
    values = _value_columns(spec, op, dataset, key)
    groups = _groups(spec, dataset, values) if spec.strategy == "columns" else [values]
    if spec.strategy == "columns":
        values = sorted(c for g in groups for c in g)
    return Selection(key, values, groups)


def _value_columns(spec: JobSpec, op: DatasetOp, dataset: Dataset, key: int | None) -> list[int]:
    if spec.columns is not None:
        return [column_index(c, dataset, "columns") for c in spec.columns]
    if op.traits.values == "none":
        return []
    cols = [
        i for i in range(len(dataset.names)) if not (op.traits.values == "not_key" and i == key)
    ]
    if op.traits.numeric and dataset.format in ("csv", "parquet"):
        cols = [i for i in cols if dataset.dtypes[i].kind in NUMERIC]  # skip text columns
        if not cols:
            raise JobSpecError(f"columns: {dataset.label} has no numeric columns for {op.name}")
    return cols


def _groups(spec: JobSpec, dataset: Dataset, values: list[int]) -> list[list[int]]:
    if spec.column_groups is None:
        return split_columns(values, spec.shards or len(values))
    groups = [[column_index(c, dataset, "column_groups") for c in g] for g in spec.column_groups]
    seen: set[int] = set()
    for group in groups:
        if not group:
            raise JobSpecError("column_groups: a group is empty; give each group a column")
        for c in group:
            if c in seen:
                raise JobSpecError(
                    f"column_groups: column {dataset.names[c]!r} is in two groups; put each "
                    "column in one group, or it would be counted twice"
                )
            seen.add(c)
    return groups


def check_types(spec: JobSpec, op: DatasetOp, dataset: Dataset, sel: Selection) -> None:
    """Refuse a dtype the op or the strategy cannot handle, naming the column and the file."""
    if op.traits.numeric:
        for c in sel.values:
            dtype = dataset.dtypes[c]
            if dtype.kind in NUMERIC:
                continue
            if dataset.format in ("csv", "parquet"):
                raise JobSpecError(
                    f"columns: {op.name} needs numeric columns; column {dataset.names[c]!r} of "
                    f"{dataset.label} is {dtype.name}; pick numeric ones with columns=[...]"
                )
            raise JobSpecError(
                f"dataset: {dataset.label}: {op.name} needs a numeric dtype "
                f"(bool, int, uint, float), got {dtype}"
            )
    if sel.key is not None:
        _check_key(spec, dataset, sel.key)


def _check_key(spec: JobSpec, dataset: Dataset, key: int) -> None:
    dtype, name = dataset.dtypes[key], dataset.names[key]
    if spec.strategy == "range" and dtype.kind not in NUMERIC:
        raise JobSpecError(
            f"key: strategy 'range' needs a numeric key; column {name!r} of {dataset.label} is "
            f"{dtype.name}: use strategy 'hash' for it"
        )
    if dtype.kind not in NUMERIC + "US":
        raise JobSpecError(f"key: column {name!r} has dtype {dtype}, which cannot be a key")
