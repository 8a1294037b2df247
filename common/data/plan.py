"""Planning a dataset job: a JobSpec becomes shard descriptors, a dry-run report, provenance.

The master calls `build_plan` at submit; `shardmill plan` calls it too and prints the report
without running anything. Only headers, file sizes and small samples are read here.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shardmill import __version__
from shardmill.data.base import Dataset, Part
from shardmill.data.columns import Selection, check_types, select_columns
from shardmill.data.datasets import detect_format, open_dataset, synthetic_label
from shardmill.data.sharding import (
    check_boundaries,
    hash_buckets,
    quantile_boundaries,
    range_buckets,
    skew,
)
from shardmill.errors import JobSpecError
from shardmill.ops import DatasetOp, get_op
from shardmill.ops.registry import NO_MODULES, Registry
from shardmill.wire.codec import Buffer, pack_value, unpack_value
from shardmill.wire.protocol import Submit
from shardmill.wire.spec import Bucket, Descriptor, JobSpec, OpOptions, ScanShard

DEFAULT_SHARDS = 16
DEFAULT_BUCKETS = 4  # hash and range shards each scan the whole dataset: keep them few


@dataclass(frozen=True)
class ShardSummary:
    """One shard as `shardmill plan` shows it; key_low/high bound a range shard's keys."""

    index: int
    rows: int
    bytes: int
    columns: list[int]
    key_low: Any = None
    key_high: Any = None


@dataclass
class Plan:
    """The shards of one job, what each reads, and the rows sent by value (if any)."""

    spec: JobSpec
    op: DatasetOp
    dataset: Dataset
    descriptors: list[Descriptor]
    summaries: list[ShardSummary]
    inputs: list[tuple[bytes, list[Buffer]]]
    estimated: bool  # shard sizes come from a row estimate or a sample

    @property
    def provenance(self) -> dict[str, Any]:
        return provenance_of(self.spec, self.descriptors)

    def report(self) -> dict[str, Any]:
        """What `shardmill plan` prints: every shard, the totals and the skew."""
        rows = [s.rows for s in self.summaries]
        return {
            **self.provenance,
            "rows": self.dataset.rows,
            "bytes": int(sum(s.bytes for s in self.summaries)),
            "columns": self.dataset.names,
            "estimated": self.estimated,
            "skew": round(skew(rows), 4),
            "shards": [_jsonable(asdict(s)) for s in self.summaries],
        }


def build_plan(
    spec: JobSpec,
    values: np.ndarray | None = None,
    *,
    dry_run: bool = False,
    registry: Registry = NO_MODULES,
) -> Plan:
    """Check the spec against the dataset and cut it into shards; JobSpecError names the fix.

    A dry run (`shardmill plan`) creates no output file and estimates each row shard's key
    range from the sample; the master skips that, so a submit reads as little as it can.
    """
    op = _op(spec, registry)
    dataset = open_dataset(spec, values)
    sel = select_columns(spec, op, dataset)
    check_types(spec, op, dataset, sel)
    sampler = _Sampler(dataset, sel, spec.sample_size, key_ranges=dry_run)
    options = _options(spec, op, dataset, sampler, create_output=not dry_run)
    planner = _STRATEGIES[spec.strategy]
    return planner(spec, op, dataset, sel, options, sampler)


def provenance_of(spec: JobSpec, descriptors: list[Descriptor]) -> dict[str, Any]:
    """Where a result came from: dataset, format, strategy, op, version and the split used."""
    prov: dict[str, Any] = {
        "dataset": spec.dataset or (synthetic_label(spec) if spec.synthetic else "value"),
        "format": detect_format(spec),
        "strategy": spec.strategy,
        "op": spec.op,
        "version": __version__,
        "shards_total": len(descriptors),
    }
    if spec.key is not None:
        prov["key"] = spec.key
    scans = [d for d in descriptors if isinstance(d, ScanShard)]
    if scans and scans[0].bucket is not None and scans[0].bucket.how == "range":
        prov["boundaries"] = scans[0].bucket.boundaries
    if spec.strategy == "columns":
        groups = {tuple(d.columns or []) for d in scans}
        prov["column_groups"] = [list(g) for g in sorted(groups)]
    if scans:
        options = scans[0].options
        prov["options"] = options.model_dump(mode="json", exclude_defaults=True)
    return prov


# ---- op options ---------------------------------------------------------------------------


def _op(spec: JobSpec, registry: Registry) -> DatasetOp:
    try:
        op = get_op(spec.op, registry)
    except KeyError as e:
        raise JobSpecError(f"op: {e.args[0]}") from None
    if spec.strategy not in op.traits.strategies:
        allowed = ", ".join(sorted(op.traits.strategies))
        raise JobSpecError(
            f"strategy: {op.name} cannot run with strategy {spec.strategy!r}; use {allowed}"
        )
    return op


def _options(
    spec: JobSpec, op: DatasetOp, dataset: Dataset, sampler: _Sampler, *, create_output: bool
) -> OpOptions:
    value_range = spec.value_range
    if op.traits.value_range:
        value_range = _value_range(spec, sampler)
    output = _output(spec, op, dataset, create=create_output) if op.traits.ordered_output else None
    return OpOptions(
        nan_aware=spec.nan_aware,
        bins=spec.bins,
        value_range=value_range,
        output=output,
        params=dict(spec.options),
    )


def _value_range(spec: JobSpec, sampler: _Sampler) -> tuple[float, float]:
    if spec.value_range is not None:
        lo, hi = spec.value_range
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
            raise JobSpecError(f"value_range: ({lo}, {hi}) must be finite with lo <= hi")
    else:
        seen = [v[np.isfinite(v)] for v in sampler.values()]
        both = np.concatenate(seen) if seen else np.zeros(0)
        lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    # np.histogram widens an empty range the same way.
    return (lo - 0.5, hi + 0.5) if lo == hi else (float(lo), float(hi))


def _output(spec: JobSpec, op: DatasetOp, dataset: Dataset, *, create: bool) -> str:
    if not dataset.exact or dataset.format in ("csv", "parquet"):
        raise JobSpecError(
            f"format: {op.name} writes each row's result at the row's position, which a "
            f"{dataset.format} file does not give; use .npy, npy_dir, synthetic or an array"
        )
    if not spec.output:
        raise JobSpecError(
            f"output: {op.name} writes one row per input row to a .npy; give "
            "output='/path/out.npy' (--output)"
        )
    path = spec.output
    if not os.path.isabs(path) or not os.path.isdir(os.path.dirname(path)):
        raise JobSpecError(f"output: {path} needs an absolute path in an existing directory")
    source = os.path.realpath(spec.dataset or "")
    if spec.dataset and (source == os.path.realpath(path) or _inside(path, source)):
        raise JobSpecError(f"output: {path} would overwrite the dataset; write it elsewhere")
    if create:
        try:
            out = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.float64, shape=(dataset.rows, 4)
            )
            del out  # created sparse: the master never touches the rows
        except OSError as e:
            raise JobSpecError(f"output: {path} cannot be created: {e.strerror or e}") from e
    return path


def _inside(path: str, directory: str) -> bool:
    return os.path.isdir(directory) and os.path.realpath(path).startswith(directory + os.sep)


# ---- strategies ---------------------------------------------------------------------------


class _Sampler:
    """A sample of the key and value columns, read at most once per plan."""

    def __init__(self, dataset: Dataset, sel: Selection, size: int, *, key_ranges: bool) -> None:
        self.dataset, self.sel, self.size = dataset, sel, size
        self.key_ranges = key_ranges  # sample just to report row shards' key ranges

    @functools.cached_property
    def _drawn(self) -> tuple[np.ndarray | None, list[np.ndarray]]:
        key = [] if self.sel.key is None else [self.sel.key]
        return self.dataset.sample([*key, *self.sel.values], self.size)

    @property
    def index(self) -> np.ndarray | None:
        return self._drawn[0]

    def keys(self) -> np.ndarray:
        assert self.sel.key is not None
        return self._drawn[1][0]

    def values(self) -> list[np.ndarray]:
        offset = 0 if self.sel.key is None else 1
        return [np.asarray(v, dtype=np.float64) for v in self._drawn[1][offset:]]


def _plan_rows(
    spec: JobSpec,
    op: DatasetOp,
    dataset: Dataset,
    sel: Selection,
    options: OpOptions,
    sampler: _Sampler,
) -> Plan:
    parts = dataset.split(
        shards=spec.shards or DEFAULT_SHARDS,
        rows_per_shard=spec.rows_per_shard,
        target_bytes=spec.target_bytes,
    )
    return _grid(spec, op, dataset, sel, options, sampler, parts)


def _plan_columns(
    spec: JobSpec,
    op: DatasetOp,
    dataset: Dataset,
    sel: Selection,
    options: OpOptions,
    sampler: _Sampler,
) -> Plan:
    _by_rows_only(spec, dataset)
    if spec.rows_per_shard or spec.target_bytes:
        parts = dataset.split(
            shards=None, rows_per_shard=spec.rows_per_shard, target_bytes=spec.target_bytes
        )
    else:
        parts = [dataset.whole()]
    return _grid(spec, op, dataset, sel, options, sampler, parts)


def _grid(
    spec: JobSpec,
    op: DatasetOp,
    dataset: Dataset,
    sel: Selection,
    options: OpOptions,
    sampler: _Sampler,
    parts: list[Part],
) -> Plan:
    """One shard per (row part, column group)."""
    descriptors: list[Descriptor] = []
    summaries, inputs = [], []
    width = max(1, len(dataset.names))
    for part in parts:
        for group in sel.groups:
            index = len(descriptors)
            descriptors.append(
                ScanShard(
                    source=part.source,
                    first_row=part.first_row,
                    columns=group,
                    key=sel.key,
                    options=options,
                )
            )
            nbytes = int(part.nbytes * (len(group) / width if spec.strategy == "columns" else 1))
            lo, hi = _key_range(sampler, part) if sampler.key_ranges else (None, None)
            summaries.append(ShardSummary(index, part.rows, nbytes, group, lo, hi))
            if part.values is not None:
                inputs.append(_by_value(part.values))
    return Plan(spec, op, dataset, descriptors, summaries, inputs, not dataset.exact)


def _plan_buckets(
    spec: JobSpec,
    op: DatasetOp,
    dataset: Dataset,
    sel: Selection,
    options: OpOptions,
    sampler: _Sampler,
) -> Plan:
    """Hash or range: each shard scans the dataset and keeps the rows of its bucket."""
    _by_rows_only(spec, dataset)
    whole = dataset.whole()
    if spec.strategy == "hash":
        count, boundaries = spec.shards or DEFAULT_BUCKETS, []
        sample_buckets = hash_buckets(sampler.keys(), count)
    else:
        boundaries = _boundaries(spec, sampler)
        count = len(boundaries) + 1
        sample_buckets = range_buckets(sampler.keys(), boundaries)
    descriptors: list[Descriptor] = []
    summaries = []
    shares = np.bincount(sample_buckets, minlength=count) / max(1, sample_buckets.size)
    for i in range(count):
        bucket = Bucket(how=spec.strategy, index=i, count=count, boundaries=boundaries)
        descriptors.append(
            ScanShard(
                source=whole.source, columns=sel.values, key=sel.key, bucket=bucket, options=options
            )
        )
        rows = round(dataset.rows * shares[i])
        mine = sampler.keys()[sample_buckets == i]
        lo, hi = _min_max(mine)
        if spec.strategy == "range":
            lo = boundaries[i - 1] if i > 0 else lo
            hi = boundaries[i] if i < count - 1 else hi
        summaries.append(ShardSummary(i, rows, int(rows * dataset.row_bytes), sel.values, lo, hi))
    return Plan(spec, op, dataset, descriptors, summaries, [], True)


def _boundaries(spec: JobSpec, sampler: _Sampler) -> list[float]:
    if spec.boundaries is not None:
        check_boundaries(spec.boundaries)
        return list(spec.boundaries)
    return quantile_boundaries(sampler.keys(), spec.shards or DEFAULT_BUCKETS)


def _by_rows_only(spec: JobSpec, dataset: Dataset) -> None:
    if dataset.format == "value":
        raise JobSpecError(
            f"strategy: an array sent by value is split by rows only; save it as .npy for "
            f"strategy {spec.strategy!r}"
        )


def _key_range(sampler: _Sampler, part: Part) -> tuple[Any, Any]:
    if sampler.sel.key is None:
        return None, None
    index = sampler.index
    if index is None or part.first_row < 0:
        return None, None
    mine = sampler.keys()[(index >= part.first_row) & (index < part.first_row + part.rows)]
    return _min_max(mine)


def _min_max(keys: np.ndarray) -> tuple[Any, Any]:
    if keys.size == 0:
        return None, None
    ordered = np.sort(keys)  # works for strings too, unlike min()
    return _scalar(ordered[0]), _scalar(ordered[-1])


def _by_value(rows: np.ndarray) -> tuple[bytes, list[Buffer]]:
    packed = pack_value(rows)  # rows is a view of the received frame: no copy is made
    return packed.data, [
        np.ascontiguousarray(a).reshape(-1).view(np.uint8).data for a in packed.arrays
    ]


def _scalar(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _scalar(v) for k, v in d.items()}


_STRATEGIES = {
    "rows": _plan_rows,
    "columns": _plan_columns,
    "hash": _plan_buckets,
    "range": _plan_buckets,
}


def values_sent(msg: Submit, arrays: list[Buffer]) -> np.ndarray | None:
    """The array a client sent by value (format "value"), as a view of its frame."""
    if msg.spec.format != "value":
        return None
    if len(msg.parts) != 1 or list(msg.part_arrays) != [1] or len(arrays) != 1:
        raise JobSpecError("parts: an array sent by value travels as one part with one frame")
    value = unpack_value(msg.parts[0], arrays)
    if not isinstance(value, np.ndarray):
        raise JobSpecError("parts: the value sent is not an array")
    return value
