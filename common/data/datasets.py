"""Datasets as the master sees them: columns, a row count, parts to hand out, and a sample.

The master reads headers, file sizes and small samples here, never the data: workers read it
(see `readers.py`). Every problem is a JobSpecError that names the file and the fix.
"""

from __future__ import annotations

import glob
import itertools
import math
import os
from abc import abstractmethod

import numpy as np

from shardmill.data import synthetic
from shardmill.data.base import Dataset, Part
from shardmill.data.csvfile import CsvLayout, byte_splits, describe_csv, sample_columns
from shardmill.data.parquet import ParquetDataset
from shardmill.data.paths import check_path, check_url, is_url
from shardmill.data.remote import RemoteError, RemoteNpy
from shardmill.data.sharding import NpyHeader, read_npy_header, row_bounds
from shardmill.errors import JobSpecError
from shardmill.wire.spec import JobSpec, NpyPiece, NpySource, Source, SyntheticSource, ValueSource

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
CSV_DTYPES = {"int64": np.dtype(np.int64), "float64": np.dtype(np.float64), "str": np.dtype("U")}


class RowDataset(Dataset):
    """A dataset whose rows have global indices: split by rows, sample by index."""

    def split(
        self, *, shards: int | None, rows_per_shard: int | None, target_bytes: int | None
    ) -> list[Part]:
        bounds = row_bounds(
            self.rows,
            shards=shards,
            rows_per_shard=rows_per_shard,
            target_bytes=target_bytes,
            row_bytes=self.row_bytes,
        )
        return [self.part(a, b) for a, b in itertools.pairwise(bounds)]

    def whole(self) -> Part:
        return self.part(0, self.rows)

    def sample(self, columns: list[int], n: int) -> tuple[np.ndarray | None, list[np.ndarray]]:
        if self.rows == 0:
            return np.zeros(0, np.int64), [np.zeros(0, self.dtypes[c]) for c in columns]
        index = np.unique(np.linspace(0, self.rows - 1, min(n, self.rows)).astype(np.int64))
        return index, self.take(index, columns)

    def part(self, start: int, stop: int) -> Part:
        size = int((stop - start) * self.row_bytes)
        return Part(self.source(start, stop), start, stop - start, size)

    @abstractmethod
    def source(self, start: int, stop: int) -> Source: ...

    @abstractmethod
    def take(self, index: np.ndarray, columns: list[int]) -> list[np.ndarray]: ...


class NpyDataset(RowDataset):
    format = "npy"

    def __init__(self, path: str, header: NpyHeader | None = None) -> None:
        self.header = header or read_npy_header(path)
        _check_npy_shape(path, self.header)
        self.path = self.label = path
        cols = self.header.shape[1] if len(self.header.shape) == 2 else 1
        self.names = [str(i) for i in range(cols)]
        self.dtypes = [self.header.dtype] * cols
        self.rows = self.header.shape[0]

    def source(self, start: int, stop: int) -> Source:
        return NpySource(pieces=[NpyPiece(path=self.path, start=start, stop=stop)])

    def take(self, index: np.ndarray, columns: list[int]) -> list[np.ndarray]:
        rows = _as_2d(np.load(self.path, mmap_mode="r", allow_pickle=False))[index]
        return [np.asarray(rows[:, c]) for c in columns]


class NpyUrlDataset(RowDataset):
    """A .npy behind a URL: the master reads its header; each worker fetches its own rows."""

    format = "npy"

    def __init__(self, url: str) -> None:
        try:
            self.npy = RemoteNpy.open(url)
        except RemoteError as e:
            raise JobSpecError(f"dataset: {e}") from e
        _check_npy_shape(url, NpyHeader(self.npy.shape, self.npy.dtype, self.npy.fortran_order))
        if self.npy.fortran_order and self.npy.cols > 1:
            raise JobSpecError(
                f"dataset: {url} is stored in Fortran order; save it with np.save of a "
                "C-ordered array (np.ascontiguousarray) so rows are contiguous bytes"
            )
        self.path = self.label = url
        self.names = [str(i) for i in range(self.npy.cols)]
        self.dtypes = [self.npy.dtype] * self.npy.cols
        self.rows = self.npy.shape[0]

    def source(self, start: int, stop: int) -> Source:
        return NpySource(pieces=[NpyPiece(path=self.path, start=start, stop=stop)])

    def sample(self, columns: list[int], n: int) -> tuple[np.ndarray | None, list[np.ndarray]]:
        """About `n` rows from 8 evenly spaced windows: 8 range requests, not one per row."""
        if self.rows == 0:
            return super().sample(columns, n)
        per = max(1, min(n, self.rows) // 8)
        starts = np.unique(np.linspace(0, max(0, self.rows - per), 8).astype(np.int64))
        index = np.unique(np.concatenate([np.arange(s, min(self.rows, s + per)) for s in starts]))
        return index, self.take(index, columns)

    def take(self, index: np.ndarray, columns: list[int]) -> list[np.ndarray]:
        try:
            rows = self.npy.take(index)
        except RemoteError as e:
            raise JobSpecError(f"dataset: {e}") from e
        return [np.asarray(rows[:, c]) for c in columns]


class NpyDirDataset(RowDataset):
    """A directory of .npy parts with the same columns and dtype, read in name order."""

    format = "npy_dir"

    def __init__(self, path: str) -> None:
        check_path(path, directory=True)
        files = sorted(glob.glob(os.path.join(glob.escape(path), "*.npy")))
        if not files:
            raise JobSpecError(f"dataset: {path} holds no .npy files; save the parts as *.npy")
        headers = [read_npy_header(f) for f in files]
        for f, h in zip(files, headers, strict=True):
            _check_npy_shape(f, h)
            _check_same(files[0], headers[0], f, h)
        self.path = self.label = path
        self.files = files
        self.lengths = [h.shape[0] for h in headers]
        self.offsets = [0, *itertools.accumulate(self.lengths)]
        first = headers[0]
        cols = first.shape[1] if len(first.shape) == 2 else 1
        self.names = [str(i) for i in range(cols)]
        self.dtypes = [first.dtype] * cols
        self.rows = self.offsets[-1]

    def source(self, start: int, stop: int) -> Source:
        pieces = []
        for f, off, n in zip(self.files, self.offsets, self.lengths, strict=False):
            a, b = max(start, off), min(stop, off + n)
            if a < b:
                pieces.append(NpyPiece(path=f, start=a - off, stop=b - off))
        return NpySource(pieces=pieces)

    def take(self, index: np.ndarray, columns: list[int]) -> list[np.ndarray]:
        which = np.searchsorted(self.offsets, index, side="right") - 1
        out: list[list[np.ndarray]] = [[] for _ in columns]
        for i in np.unique(which):
            rows = _as_2d(np.load(self.files[i], mmap_mode="r"))[
                index[which == i] - self.offsets[i]
            ]
            for j, c in enumerate(columns):
                out[j].append(np.asarray(rows[:, c]))
        return [np.concatenate(parts) for parts in out]


class SyntheticDataset(RowDataset):
    format = "synthetic"

    def __init__(self, spec: JobSpec) -> None:
        assert spec.synthetic is not None
        self.spec = spec.synthetic
        self.label = synthetic_label(spec)
        self.names = [str(i) for i in range(self.spec.cols)]
        self.dtypes = [np.dtype(np.float64)] * self.spec.cols
        self.rows = self.spec.rows

    def source(self, start: int, stop: int) -> Source:
        return SyntheticSource(spec=self.spec, start=start, stop=stop)

    def sample(self, columns: list[int], n: int) -> tuple[np.ndarray | None, list[np.ndarray]]:
        index, rows = synthetic.sample(self.spec, n)
        return index, [rows[:, c] for c in columns]

    def take(self, index: np.ndarray, columns: list[int]) -> list[np.ndarray]:
        raise NotImplementedError("synthetic data is sampled by blocks")  # pragma: no cover


class ValueDataset(RowDataset):
    """An array the client sent by value; each shard's rows ride in its task as a frame."""

    format = "value"

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim not in (1, 2) or array.dtype.hasobject or array.dtype.names:
            raise JobSpecError(
                f"dataset: the array sent has shape {array.shape} and dtype {array.dtype}; "
                "send a 1-D or 2-D array of a plain dtype"
            )
        self.array = _as_2d(array)
        self.label = f"value({array.dtype.str}, {list(array.shape)})"
        self.names = [str(i) for i in range(self.array.shape[1])]
        self.dtypes = [array.dtype] * self.array.shape[1]
        self.rows = int(array.shape[0])

    def part(self, start: int, stop: int) -> Part:
        base = super().part(start, stop)
        return Part(base.source, start, stop - start, base.nbytes, self.array[start:stop])

    def source(self, start: int, stop: int) -> Source:
        return ValueSource()

    def take(self, index: np.ndarray, columns: list[int]) -> list[np.ndarray]:
        return [self.array[index, c] for c in columns]


class CsvDataset(Dataset):
    """Split at byte ranges; the row count is estimated from the sample's mean line length."""

    format = "csv"
    exact = False

    def __init__(self, spec: JobSpec, path: str) -> None:
        if not is_url(path):
            check_path(path, directory=False)
        self.layout: CsvLayout = describe_csv(
            path, header=spec.header, delimiter=spec.delimiter, dtypes=dict(spec.dtypes)
        )
        self.delimiter = spec.delimiter
        self.label = path
        self.names = list(self.layout.names)
        self.dtypes = [CSV_DTYPES[t] for t in self.layout.dtypes]
        span = self.layout.size - self.layout.data_start
        self.rows = round(span / self.layout.line_bytes)

    @property
    def row_bytes(self) -> float:
        return self.layout.line_bytes

    def split(
        self, *, shards: int | None, rows_per_shard: int | None, target_bytes: int | None
    ) -> list[Part]:
        span = self.layout.size - self.layout.data_start
        if rows_per_shard is not None:
            target_bytes = max(1, int(rows_per_shard * self.layout.line_bytes))
        n = math.ceil(span / target_bytes) if target_bytes else (shards or 1)
        n = min(n, max(1, self.rows))  # no more shards than (estimated) rows
        return [self._part(a, b) for a, b in byte_splits(self.layout, max(1, n))]

    def whole(self) -> Part:
        return self._part(self.layout.data_start, self.layout.size)

    def sample(self, columns: list[int], n: int) -> tuple[np.ndarray | None, list[np.ndarray]]:
        return None, sample_columns(self.layout, columns, n, self.delimiter)

    def _part(self, start: int, stop: int) -> Part:
        rows = round((stop - start) / self.layout.line_bytes)
        return Part(self.layout.source(start, stop, self.delimiter), -1, rows, stop - start)


# ---- opening ----------------------------------------------------------------------------------


def detect_format(spec: JobSpec, has_values: bool = False) -> str:
    """The spec's format, or the one its dataset implies."""
    if spec.format is not None:
        return spec.format
    if has_values:
        return "value"
    if spec.dataset is None:
        return "synthetic" if spec.synthetic is not None else "npy"
    if spec.dataset.lower().endswith(CSV_SUFFIXES):
        return "csv"
    if spec.dataset.lower().endswith((".parquet", ".pq")):
        return "parquet"
    return "npy"


def synthetic_label(spec: JobSpec) -> str:
    s = spec.synthetic
    assert s is not None
    keys = "" if s.keys is None else f", keys={s.keys}"
    return f"synthetic(rows={s.rows}, cols={s.cols}, seed={s.seed}{keys})"


def open_dataset(spec: JobSpec, values: np.ndarray | None = None) -> Dataset:
    """Describe the spec's dataset from its header (and a sample): never reads the data."""
    fmt = detect_format(spec, values is not None)
    if fmt == "value":
        if values is None:
            raise JobSpecError("format: 'value' needs an array sent with the job")
        return ValueDataset(values)
    if fmt == "synthetic":
        if spec.synthetic is None:
            raise JobSpecError("synthetic: give rows and cols, e.g. synthetic={'rows': 10**6}")
        return SyntheticDataset(spec)
    if not spec.dataset:
        raise JobSpecError(
            f"dataset: op {spec.op!r} needs a dataset (a .npy or .csv path, a directory of .npy "
            "parts with format='npy_dir', synthetic=..., or an array)"
        )
    if is_url(spec.dataset):
        return _open_url(spec, spec.dataset, fmt)
    if fmt == "csv":
        return CsvDataset(spec, spec.dataset)
    if fmt == "npy_dir":
        return NpyDirDataset(spec.dataset)
    if fmt == "parquet":
        return ParquetDataset(spec.dataset)
    return NpyDataset(spec.dataset)


def _open_url(spec: JobSpec, url: str, fmt: str) -> Dataset:
    check_url(url)
    if fmt == "csv":
        return CsvDataset(spec, url)
    if fmt != "npy":
        raise JobSpecError(
            f"dataset: {url}: .npy and CSV files can be read by URL, {fmt} not yet; put it "
            "on storage every worker mounts"
        )
    return NpyUrlDataset(url)


def _check_npy_shape(path: str, header: NpyHeader) -> None:
    if len(header.shape) not in (1, 2):
        raise JobSpecError(
            f"dataset: {path} has shape {header.shape}; dataset ops need 1-D or 2-D data"
        )
    if header.dtype.names is not None or header.dtype.hasobject:
        raise JobSpecError(
            f"dataset: {path} has dtype {header.dtype}; save a plain numeric 2-D array instead"
        )


def _check_same(first: str, h0: NpyHeader, path: str, h: NpyHeader) -> None:
    if h.dtype != h0.dtype or h.shape[1:] != h0.shape[1:]:
        raise JobSpecError(
            f"dataset: part {path} holds {h.dtype} rows of shape {h.shape[1:]}, but {first} "
            f"holds {h0.dtype} rows of shape {h0.shape[1:]}; every part needs the same "
            "columns and dtype"
        )


def _as_2d(arr: np.ndarray) -> np.ndarray:
    return arr.reshape(-1, 1) if arr.ndim == 1 else arr
