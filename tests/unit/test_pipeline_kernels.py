"""The pipeline's table kernels: combiner math, joins, stable partitions, the sweep."""

from __future__ import annotations

import itertools
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shardmill.errors import BadInput
from shardmill.pipeline import aggregate
from shardmill.pipeline.joins import join
from shardmill.pipeline.sinks import partitions_of
from shardmill.pipeline.store import sweep
from shardmill.pipeline.tables import check_table

AGGS = [
    ("total", "v", "sum"),
    ("n", "v", "count"),
    ("mean", "v", "mean"),
    ("lo", "v", "min"),
    ("hi", "v", "max"),
]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(-1000, 1000)), min_size=1, max_size=200),
    st.integers(1, 5),
    st.randoms(use_true_random=False),
)
def test_partials_folded_in_any_grouping_equal_the_whole(
    rows: list[tuple[int, int]], pieces: int, rnd: object
) -> None:
    # Given rows cut into pieces, each combined on its own (the map side's combiner)
    k = np.array([r[0] for r in rows])
    v = np.array([r[1] for r in rows])
    cuts = sorted({0, len(rows), *(int(x) for x in np.linspace(0, len(rows), pieces + 1))})
    parts = [
        aggregate.partial({"k": k[a:b], "v": v[a:b]}, ["k"], AGGS, "t")
        for a, b in itertools.pairwise(cuts)
        if b > a
    ]
    assert isinstance(rnd, random.Random)
    rnd.shuffle(parts)
    # When the partials are folded in that order and finished
    merged = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    got = aggregate.finish(aggregate.fold(merged, ["k"], AGGS, "t"), ["k"], AGGS)
    # Then each aggregate equals the whole's, computed directly
    for i, key in enumerate(got["k"].tolist()):
        vals = v[k == key]
        assert got["total"][i] == vals.sum() and got["n"][i] == len(vals)
        assert got["lo"][i] == vals.min() and got["hi"][i] == vals.max()
        assert got["mean"][i] == pytest.approx(vals.mean())
    assert sorted(got["k"].tolist()) == sorted(set(k.tolist()))


def test_join_many_to_many_and_left_nulls() -> None:
    left = {"k": np.array([1, 2, 2, 3]), "a": np.array([10, 20, 21, 30])}
    right = {"k": np.array([2, 2, 1, 9]), "a": np.array([7, 8, 9, 0]), "s": np.array(list("xyzw"))}
    inner = join(left, right, on="k", how="inner", where="t")
    assert inner["k"].tolist() == [1, 2, 2, 2, 2]
    assert inner["a"].tolist() == [10, 20, 20, 21, 21]
    assert inner["a_right"].tolist() == [9, 7, 8, 7, 8]  # each left row's matches in right order
    out = join(left, right, on="k", how="left", where="t")
    assert out["k"].tolist() == [1, 2, 2, 2, 2, 3]
    assert np.isnan(out["a_right"][-1]) and out["s"][-1] == ""


def test_join_refuses_a_string_key_against_numbers() -> None:
    with pytest.raises(BadInput, match="cast one side"):
        join({"k": np.array([1])}, {"k": np.array(["1"])}, on="k", how="inner", where="t")


def test_partitions_are_stable_and_independent_of_string_width() -> None:
    # The same key lands in the same partition whatever the array's width (U3 vs U9) and in
    # every process (no salted hash()): fixed values guard against a changed hash.
    short = {"k": np.array(["ab", "cd", "e"])}
    wide = {"k": np.array(["ab", "cd", "e", "longer-one"])}
    p1 = partitions_of(short, ["k"], 7, "t")
    p2 = partitions_of(wide, ["k"], 7, "t")
    assert p1.tolist() == p2[:3].tolist()
    ints = partitions_of({"k": np.arange(6)}, ["k"], 5, "t")
    assert (
        ints.tolist() == partitions_of({"k": np.arange(6, dtype=np.int32)}, ["k"], 5, "t").tolist()
    )


def test_check_table_names_the_problem() -> None:
    with pytest.raises(BadInput, match=r"column 'x' has shape \(2, 2\); columns are 1-D"):
        check_table({"x": np.zeros((2, 2))}, "stage 0 shard 1")
    with pytest.raises(BadInput, match="holds Python objects"):
        check_table({"x": np.array([1, "a"], dtype=object)}, "s")
    assert check_table({"x": np.array(["a", "b"], dtype=object)}, "s")["x"].dtype.kind == "U"


def test_sweep_removes_only_pipelines_unused_for_the_ttl(tmp_path: Path) -> None:
    old, new = tmp_path / "a", tmp_path / "b"
    old.mkdir()
    new.mkdir()
    past = time.time() - 100
    os.utime(old, (past, past))
    assert sweep(tmp_path, ttl=50, now=time.time()) == ["a"]
    assert not old.exists() and new.exists()
