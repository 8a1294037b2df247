"""Turn a job spec into shard descriptors: references to data, never the data itself."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardmill.data.paths import check_path
from shardmill.errors import JobSpecError
from shardmill.wire.spec import RowRange


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran_order: bool


def read_npy_header(path: str) -> NpyHeader:
    """Read only the header of a .npy file; raise JobSpecError naming the file and the fix."""
    check_path(
        path,
        directory=False,
        hint="give the path of a .npy file, or pass "
        "format='npy_dir' (--format npy_dir) for a directory of .npy parts",
    )
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (OSError, ValueError, EOFError) as e:
        raise JobSpecError(f"dataset: {path} is not a readable .npy file: {e}") from e
    return NpyHeader(tuple(int(n) for n in shape), np.dtype(dtype), bool(fortran))


def plan_rows(path: str, shards: int, rows: int) -> list[RowRange]:
    """Split `rows` rows into `shards` contiguous near-equal row ranges (fewer if rows < shards)."""
    n = max(1, min(shards, rows))
    bounds = np.linspace(0, rows, n + 1).round().astype(np.int64)
    return [RowRange(path=path, start=int(bounds[i]), stop=int(bounds[i + 1])) for i in range(n)]


# ---- row, column, hash and range strategies ------------------------------------------------


def row_bounds(
    rows: int,
    *,
    shards: int | None = None,
    rows_per_shard: int | None = None,
    target_bytes: int | None = None,
    row_bytes: float = 8.0,
) -> list[int]:
    """Shard boundaries over `rows` rows: by count, by rows per shard or by bytes per shard."""
    if rows_per_shard is None and target_bytes is not None:
        rows_per_shard = max(1, int(target_bytes // max(row_bytes, 1e-9)))
    if rows_per_shard is not None:
        return [*range(0, rows, rows_per_shard), rows] if rows else [0, 0]
    n = max(1, min(shards or 1, rows))
    return [int(b) for b in np.linspace(0, rows, n + 1).round().astype(np.int64)]


def split_columns(columns: list[int], groups: int) -> list[list[int]]:
    """`columns` cut into `groups` contiguous near-equal groups (fewer if there are fewer)."""
    n = max(1, min(groups, len(columns)))
    cuts = np.linspace(0, len(columns), n + 1).round().astype(np.int64)
    return [columns[int(a) : int(b)] for a, b in itertools.pairwise(cuts)]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FLOAT_TAG = np.uint64(0x5BD1E9955BD1E995)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _mix64(z: np.ndarray) -> np.ndarray:
    # splitmix64's finalizer: a fixed bijection on 64-bit words, the same in every process.
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = z ^ (z >> np.uint64(31))
    return out


def stable_hash(keys: np.ndarray) -> np.ndarray:
    """A 64-bit hash per key that is the same in every process and every run.

    Integers (and floats holding integers, so 3 and 3.0 agree) mix their value; other floats
    mix their bits; strings and bytes run FNV-1a over their characters. Python's `hash()` is
    salted per process (PYTHONHASHSEED) and would scatter a key across shards.
    """
    arr = np.asarray(keys)
    if arr.dtype.kind == "O":
        arr = arr.astype(str)
    if arr.dtype.kind in "biu":
        return _mix64(_as_u64(arr))
    if arr.dtype.kind == "f":
        return _hash_floats(arr.astype(np.float64))
    if arr.dtype.kind in "US":
        return _hash_strings(arr)
    raise TypeError(f"cannot hash keys of dtype {arr.dtype}; use integer, float or string keys")


def _as_u64(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "u":
        return arr.astype(np.uint64)
    return arr.astype(np.int64).view(np.uint64)


def _hash_floats(x: np.ndarray) -> np.ndarray:
    integral = np.isfinite(x) & (np.floor(x) == x) & (np.abs(x) < 2.0**63)
    as_int = np.where(integral, x, 0.0).astype(np.int64).view(np.uint64)
    canonical = np.where(np.isnan(x), np.nan, x)  # one NaN, whatever its payload
    bits = canonical.view(np.uint64) ^ _FLOAT_TAG
    return np.where(integral, _mix64(as_int), _mix64(bits))


def _hash_strings(arr: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(arr.reshape(-1))
    unit = np.uint32 if flat.dtype.kind == "U" else np.uint8
    width = flat.dtype.itemsize // np.dtype(unit).itemsize
    codes = flat.view(unit).reshape(flat.size, width) if width else np.zeros((flat.size, 0), unit)
    lengths = np.char.str_len(flat)
    h = np.full(flat.size, _FNV_OFFSET, dtype=np.uint64)
    for j in range(width):
        step = (h ^ codes[:, j].astype(np.uint64)) * _FNV_PRIME
        h = np.where(j < lengths, step, h)
    return _mix64(h).reshape(arr.shape)


def hash_buckets(keys: np.ndarray, count: int) -> np.ndarray:
    """The shard (0..count-1) of each key under hash partitioning."""
    return (stable_hash(keys) % np.uint64(count)).astype(np.int64)


def range_buckets(keys: np.ndarray, boundaries: list[float]) -> np.ndarray:
    """Shard i holds boundaries[i-1] <= key < boundaries[i]; NaN keys land in the last shard."""
    values = np.asarray(keys, dtype=np.float64)
    return np.searchsorted(np.asarray(boundaries, dtype=np.float64), values, side="right")


def check_boundaries(boundaries: list[float]) -> None:
    """Refuse split points that are not finite and strictly increasing, naming the first bad one."""
    for i, b in enumerate(boundaries):
        if not np.isfinite(b):
            raise JobSpecError(f"boundaries: {b} at index {i} is not a finite number")
        if i and b <= boundaries[i - 1]:
            raise JobSpecError(
                f"boundaries: not sorted: {b} at index {i} comes after {boundaries[i - 1]}; "
                "give strictly increasing split points, e.g. [10, 20, 30]"
            )


def quantile_boundaries(sample: np.ndarray, shards: int) -> list[float]:
    """Split points that cut a sample of keys into `shards` near-equal parts (duplicates merged)."""
    values = np.asarray(sample, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0 or shards <= 1:
        return []
    q = np.quantile(values, np.arange(1, shards) / shards)
    return [float(v) for v in np.unique(q)]


def skew(sizes: list[int] | list[float]) -> float:
    """Largest shard over the mean shard: 1.0 is perfectly even."""
    if not sizes or not sum(sizes):
        return 1.0
    return float(max(sizes) / (sum(sizes) / len(sizes)))
