"""Sharding strategies: row bounds, column groups, a stable hash, range buckets, quantiles."""

from __future__ import annotations

import itertools
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shardmill.data.sharding import (
    check_boundaries,
    hash_buckets,
    quantile_boundaries,
    range_buckets,
    row_bounds,
    skew,
    split_columns,
    stable_hash,
)
from shardmill.errors import JobSpecError

M64 = 2**64 - 1


def _mix(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def reference_hash(value: int | float | str | bytes) -> int:
    """The documented hash, written out in plain Python (no NumPy)."""
    if isinstance(value, float):
        if math.isfinite(value) and value == math.floor(value) and abs(value) < 2.0**63:
            return _mix(int(value) & M64)
        bits = struct.unpack("<Q", struct.pack("<d", math.nan if math.isnan(value) else value))[0]
        return _mix(bits ^ 0x5BD1E9955BD1E995)
    if isinstance(value, int):
        return _mix(value & M64)
    units = [ord(c) for c in value] if isinstance(value, str) else list(value)
    h = 0xCBF29CE484222325
    for u in units:
        h = ((h ^ u) * 0x100000001B3) & M64
    return _mix(h)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(0, 10_000),
    how=st.sampled_from(["shards", "rows_per_shard", "target_bytes"]),
    n=st.integers(1, 5000),
)
def test_row_bounds_tile_the_rows_exactly(rows: int, how: str, n: int) -> None:
    # Given any row count and any way of sizing shards / When bounds are made
    bounds = row_bounds(rows, row_bytes=8.0, **{how: n})  # type: ignore[arg-type]
    # Then they start at 0, end at rows, never go backwards and leave no empty shard behind
    assert bounds[0] == 0 and bounds[-1] == rows
    sizes = [b - a for a, b in itertools.pairwise(bounds)]
    assert all(s > 0 for s in sizes) or rows == 0
    if how == "rows_per_shard" and rows:
        assert max(sizes) <= n


def test_split_columns_and_skew() -> None:
    assert split_columns([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3, 4]]
    assert split_columns([7], 3) == [[7]]
    assert skew([10, 10, 10]) == 1.0
    assert skew([30, 0, 0]) == 3.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=50))
def test_hash_of_ints_matches_the_plain_python_reference(values: list[int]) -> None:
    got = stable_hash(np.array(values, dtype=np.int64)).tolist()
    assert got == [reference_hash(v) for v in values]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50))
def test_hash_of_floats_matches_the_reference_and_integral_floats_hash_as_ints(
    values: list[float],
) -> None:
    got = stable_hash(np.array(values, dtype=np.float64)).tolist()
    assert got == [reference_hash(v) for v in values]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(min_codepoint=1), max_size=12), max_size=30))
def test_hash_of_strings_matches_the_reference(values: list[str]) -> None:
    got = stable_hash(np.array(values, dtype=str)).tolist() if values else []
    assert got == [reference_hash(v) for v in values]


def test_same_key_same_hash_across_types() -> None:
    # 3 and 3.0 (an int key in one file, a float key in another) agree; ASCII str and bytes too
    assert stable_hash(np.array([3]))[0] == stable_hash(np.array([3.0]))[0]
    assert stable_hash(np.array(["abc"]))[0] == stable_hash(np.array([b"abc"]))[0]
    # A string's hash does not depend on the array's fixed width
    wide = np.array(["abc", "a much longer string"])
    assert stable_hash(wide)[0] == stable_hash(np.array(["abc"]))[0]
    assert stable_hash(np.array(["x"], dtype=object))[0] == stable_hash(np.array(["x"]))[0]


def test_hash_buckets_spread_keys_evenly() -> None:
    counts = np.bincount(hash_buckets(np.arange(100_000), 8), minlength=8)
    assert counts.min() > 0.95 * 100_000 / 8
    with pytest.raises(TypeError, match="cannot hash keys"):
        stable_hash(np.array([1 + 2j]))


def test_range_buckets_are_left_closed() -> None:
    keys = np.array([-5.0, 9.99, 10.0, 19.0, 20.0, 1e9, np.nan])
    assert range_buckets(keys, [10.0, 20.0]).tolist() == [0, 0, 1, 1, 2, 2, 2]


def test_unsorted_boundaries_are_refused_naming_the_first_bad_one() -> None:
    check_boundaries([1.0, 2.0, 3.5])
    with pytest.raises(JobSpecError, match=r"5\.0 at index 2 comes after 7\.0"):
        check_boundaries([1.0, 7.0, 5.0])
    with pytest.raises(JobSpecError, match="strictly increasing"):
        check_boundaries([1.0, 1.0])
    with pytest.raises(JobSpecError, match="not a finite number"):
        check_boundaries([1.0, math.inf])


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shards=st.integers(2, 12))
def test_quantile_boundaries_balance_the_sample(seed: int, shards: int) -> None:
    sample = np.random.default_rng(seed).exponential(size=5000)
    boundaries = quantile_boundaries(sample, shards)
    check_boundaries(boundaries)
    sizes = np.bincount(range_buckets(sample, boundaries), minlength=len(boundaries) + 1)
    assert skew(sizes.tolist()) < 1.05
    # Heavy duplicates collapse boundaries rather than making empty shards
    assert quantile_boundaries(np.zeros(100), shards) == [0.0]
