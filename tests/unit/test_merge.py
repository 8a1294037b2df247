"""Merge math: any split, merged in any order, equals the statistics of the whole."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings, strategies as st

from shardmill.master.merge import MapMerger, OpMerger
from shardmill.ops.column_stats import ColumnStats
from shardmill.wire.codec import pack_value, unpack_value


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(0, 300),
    cols=st.integers(1, 4),
    cuts=st.lists(st.integers(0, 300), max_size=12),
    order_seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-3, 1.0, 1e6]),
)
def test_column_stats_any_split_any_order_equals_whole(
    rows: int, cols: int, cuts: list[int], order_seed: int, scale: float
) -> None:
    data = np.random.default_rng(order_seed).normal(5 * scale, scale, size=(rows, cols))
    bounds = sorted({0, rows, *[c for c in cuts if c <= rows]})
    op = ColumnStats()
    parts = [op.run(data[a:b]) for a, b in itertools.pairwise(bounds)]
    order = np.random.default_rng(order_seed).permutation(len(parts))
    merger = OpMerger(op)
    for i in order:
        packed = pack_value(parts[i])
        merger.add(int(i), packed.data, [bytes(a.data) for a in packed.arrays])
    final = merger.final()
    got = unpack_value(final.parts[0], final.arrays)
    assert got["count"] == rows
    if rows:
        for key, want in [
            ("mean", data.mean(0)),
            ("std", data.std(0)),
            ("min", data.min(0)),
            ("max", data.max(0)),
        ]:
            np.testing.assert_allclose(got[key], want, rtol=1e-9, atol=1e-9 * scale, err_msg=key)


def test_map_merger_orders_parts_by_shard() -> None:
    merger = MapMerger([1, 1, 2])
    for shard in (2, 0):
        merger.add(shard, pack_value([shard]).data, [])
    out = merger.final(missing=(1,))
    assert [unpack_value(p) for p in out.parts] == [[0], [None], [2]]
