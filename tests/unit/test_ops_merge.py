"""Every op, any sharding strategy, any merge order: the whole-data answer (NumPy or plain Python).

Shards run in-process exactly as a worker's child runs them (run_scan) and are merged through
the wire format exactly as the master merges them (OpMerger).
"""

from __future__ import annotations

import collections
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from inprocess import merge, run_spec, shard_partials

from shardmill.data.plan import build_plan
from shardmill.data.synthetic import BLOCK_ROWS, materialize, rows
from shardmill.master.checkpoint import Checkpointer
from shardmill.master.jobs import accept
from shardmill.ops.registry import NO_MODULES
from shardmill.wire.protocol import Submit
from shardmill.wire.spec import JobSpec

OPS = ["column_stats", "sum_count", "histogram", "value_counts", "groupby"]
KEYED = {"value_counts", "groupby"}


def make_data(seed: int, n: int, cols: int, keys: int, nan_share: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(3.0, 10.0, size=(n, cols))
    data[:, 0] = rng.integers(0, keys, size=n)  # column 0: integer keys, never NaN
    holes = rng.random((n, cols)) < nan_share
    holes[:, 0] = False
    data[holes] = np.nan
    return data


def reference(op: str, data: np.ndarray, result: dict[str, Any], nan_aware: bool) -> None:
    """Assert `result` equals the answer computed on the whole array in one piece."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN, as expected
        CHECKS[op](data, result, nan_aware)


def _column_stats(data: np.ndarray, got: dict[str, Any], nan_aware: bool) -> None:
    assert got["count"] == data.shape[0] or data.shape[0] == 0
    if data.shape[0] == 0:
        return
    fns = [np.nanmean, np.nanstd, np.nanmin, np.nanmax, np.nansum] if nan_aware else None
    fns = fns or [np.mean, np.std, np.min, np.max, np.sum]
    for key, fn in zip(["mean", "std", "min", "max", "sum"], fns, strict=True):
        want = fn(data, axis=0)
        np.testing.assert_allclose(got[key], want, rtol=1e-9, atol=1e-9, err_msg=key)


def _sum_count(data: np.ndarray, got: dict[str, Any], nan_aware: bool) -> None:
    want = np.nansum(data, axis=0) if nan_aware else data.sum(axis=0)
    np.testing.assert_allclose(got["sum"], want, rtol=1e-9, atol=1e-9)
    counts = (~np.isnan(data)).sum(axis=0) if nan_aware else np.full(data.shape[1], len(data))
    assert got["count"].tolist() == counts.tolist()


def _histogram(data: np.ndarray, got: dict[str, Any], nan_aware: bool) -> None:
    edges = got["edges"]
    for j in range(data.shape[1]):
        col = data[:, j][~np.isnan(data[:, j])]
        want, _ = np.histogram(col, bins=edges.size - 1, range=(edges[0], edges[-1]))
        assert got["counts"][j].tolist() == want.tolist()
        assert got["nan"][j] == np.isnan(data[:, j]).sum()


def _value_counts(data: np.ndarray, got: dict[str, Any], nan_aware: bool) -> None:
    want = collections.Counter(data[:, 0].tolist())
    assert dict(zip(got["keys"].tolist(), got["counts"].tolist(), strict=True)) == want


def _groupby(data: np.ndarray, got: dict[str, Any], nan_aware: bool) -> None:
    groups: dict[float, list[list[float]]] = collections.defaultdict(list)
    for row in data.tolist():
        groups[row[0]].append(row[1:])
    assert got["keys"].tolist() == sorted(groups)
    for g, key in enumerate(got["keys"].tolist()):
        block = np.array(groups[key]).reshape(-1, data.shape[1] - 1)
        total = np.nansum(block, axis=0) if nan_aware else block.sum(axis=0)
        np.testing.assert_allclose(got["sum"][g], total, rtol=1e-9, atol=1e-9)
        mean = np.nanmean(block, axis=0) if nan_aware else block.mean(axis=0)
        np.testing.assert_allclose(got["mean"][g], mean, rtol=1e-9, atol=1e-9)
        low = np.nanmin(block, axis=0) if nan_aware else block.min(axis=0)
        np.testing.assert_allclose(got["min"][g], low)


CHECKS = {
    "column_stats": _column_stats,
    "sum_count": _sum_count,
    "histogram": _histogram,
    "value_counts": _value_counts,
    "groupby": _groupby,
}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    op=st.sampled_from(OPS),
    strategy=st.sampled_from(["rows", "columns", "hash", "range"]),
    n=st.integers(0, 400),
    cols=st.integers(2, 4),
    keys=st.integers(1, 30),
    shards=st.integers(1, 7),
    nan_aware=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_strategy_any_merge_order_gives_the_whole_data_answer(
    op: str,
    strategy: str,
    n: int,
    cols: int,
    keys: int,
    shards: int,
    nan_aware: bool,
    seed: int,
) -> None:
    assume(not (op in KEYED and strategy == "columns"))
    # Given an array with integer keys in column 0 (and NaNs elsewhere when nan_aware)
    data = make_data(seed, n, cols, keys, 0.1 if nan_aware else 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.npy"
        np.save(path, data)
        # When it is sharded by `strategy` and the partials are merged in a random order
        spec = JobSpec(
            op=op,
            dataset=str(path),
            strategy=strategy,  # type: ignore[arg-type]
            shards=shards,
            key=0 if strategy in ("hash", "range") or op in KEYED else None,
            nan_aware=nan_aware,
            bins=7,
        )
        result = run_spec(spec, seed=seed)
    # Then the result is the one computed on the whole array
    reference(op, data, result, nan_aware)
    assert sorted(result["provenance"]["shards"]) == list(range(result["shards_merged"]))


@settings(max_examples=40, deadline=None)
@given(
    op=st.sampled_from(OPS),
    n=st.integers(0, 300),
    rows_per_shard=st.integers(1, 120),
    seed=st.integers(0, 2**32 - 1),
)
def test_arrays_sent_by_value_any_merge_order(
    op: str, n: int, rows_per_shard: int, seed: int
) -> None:
    data = make_data(seed, n, 3, 5, 0.0)
    spec = JobSpec(op=op, format="value", rows_per_shard=rows_per_shard, key=0, bins=5)
    reference(op, data, run_spec(spec, data, seed=seed), nan_aware=False)


def test_hash_partitioning_puts_each_key_in_exactly_one_shard(tmp_path: Path) -> None:
    # Given keys spread over every row shard / When hash-partitioned into 5 shards
    data = make_data(1, 5000, 3, 40, 0.0)
    np.save(tmp_path / "d.npy", data)
    spec = JobSpec(op="groupby", dataset=str(tmp_path / "d.npy"), strategy="hash", key=0, shards=5)
    plan = build_plan(spec)
    partials = shard_partials(plan)
    # Then the shards' key sets are disjoint and cover every key: each group is merged once
    key_sets = [set(p["keys"].tolist()) for p in partials]
    assert sum(len(s) for s in key_sets) == len(set().union(*key_sets)) == 40
    reference("groupby", data, merge(plan, partials, [4, 2, 0, 3, 1]), nan_aware=False)


def test_synthetic_rows_do_not_depend_on_the_sharding() -> None:
    spec = JobSpec(op="column_stats", synthetic={"rows": 2 * BLOCK_ROWS + 7, "cols": 3, "seed": 5})
    assert spec.synthetic is not None
    whole = materialize(spec.synthetic)
    a, b = BLOCK_ROWS - 3, 2 * BLOCK_ROWS + 2
    np.testing.assert_array_equal(rows(spec.synthetic, a, b), whole[a:b])
    for strategy in ("rows", "columns"):
        got = run_spec(spec.model_copy(update={"strategy": strategy, "shards": 3}))
        np.testing.assert_allclose(got["mean"], whole.mean(axis=0), rtol=1e-9)


@pytest.mark.parametrize("nan_aware", [False, True])
def test_row_stats_writes_the_single_process_answer_row_for_row(
    tmp_path: Path, nan_aware: bool
) -> None:
    data = make_data(3, 1001, 5, 4, 0.2 if nan_aware else 0.0)
    np.save(tmp_path / "d.npy", data)
    out = tmp_path / "out.npy"
    spec = JobSpec(
        op="row_stats",
        dataset=str(tmp_path / "d.npy"),
        output=str(out),
        shards=7,
        nan_aware=nan_aware,
    )
    got = run_spec(spec)
    assert got["count"] == 1001 and got["output"] == str(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if nan_aware:
            want = [np.nanmean(data, 1), np.nanstd(data, 1), np.nanmin(data, 1), np.nanmax(data, 1)]
        else:
            want = [data.mean(1), data.std(1), data.min(1), data.max(1)]
    np.testing.assert_allclose(np.load(out), np.stack(want, axis=1), rtol=1e-12)


def test_npy_dir_parts_read_as_one_dataset(tmp_path: Path) -> None:
    data = make_data(4, 1000, 3, 9, 0.0)
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, (a, b) in enumerate([(0, 100), (100, 100), (100, 640), (640, 1000)]):
        np.save(parts / f"part-{i:03d}.npy", data[a:b])
    spec = JobSpec(op="column_stats", dataset=str(parts), format="npy_dir", shards=6)
    reference("column_stats", data, run_spec(spec), nan_aware=False)
    plan = build_plan(spec.model_copy(update={"strategy": "range", "key": 0, "shards": 3}))
    assert [s.rows for s in plan.summaries] and plan.report()["rows"] == 1000


def test_a_dataset_job_survives_a_checkpoint_round_trip(tmp_path: Path) -> None:
    # Given a hash-partitioned groupby job written to a state dir
    data = make_data(5, 500, 3, 9, 0.0)
    np.save(tmp_path / "d.npy", data)
    spec = JobSpec(op="groupby", dataset=str(tmp_path / "d.npy"), strategy="hash", key=0, shards=3)
    job = accept(Submit(spec=spec), [], NO_MODULES)
    store = Checkpointer(tmp_path / "state")
    store.job_added("j1", job, spec=spec, submitted_at=0.0)
    store.close()
    # When a new master restores it
    restored = Checkpointer(tmp_path / "state").restore(NO_MODULES)[0]["j1"]
    # Then its descriptors and the provenance of its result are the same
    assert restored.descriptors == job.descriptors
    assert restored.merger.provenance == job.merger.provenance  # type: ignore[union-attr]
