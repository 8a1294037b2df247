"""Parquet (the optional extra): shards are runs of row groups; results match NumPy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from inprocess import run_spec

from shardmill.data.plan import build_plan
from shardmill.errors import JobSpecError
from shardmill.wire.spec import JobSpec

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def test_parquet_row_groups_as_shards_match_numpy(tmp_path: Path) -> None:
    # Given a Parquet file of 10 row groups with a text key and two numeric columns
    rng = np.random.default_rng(2)
    city = np.array(["oslo", "lima", "pune"])[rng.integers(0, 3, 5000)]
    temp, rain = rng.normal(10, 5, 5000), rng.random(5000)
    table = pa.table({"city": city, "temp": temp, "rain": rain})
    path = tmp_path / "w.parquet"
    pq.write_table(table, path, row_group_size=500)
    spec = JobSpec(op="column_stats", dataset=str(path), shards=4)
    # When column_stats runs over 4 shards, and groupby over 3 hash shards
    plan = build_plan(spec)
    stats = run_spec(spec)
    grouped = run_spec(
        spec.model_copy(update={"op": "groupby", "key": "city", "strategy": "hash", "shards": 3})
    )
    # Then shards are whole row groups, and the answers equal NumPy's
    assert [s.rows for s in plan.summaries] == [1500, 1000, 1500, 1000]
    np.testing.assert_allclose(stats["mean"], [temp.mean(), rain.mean()], rtol=1e-12)
    for key, count in zip(grouped["keys"].tolist(), grouped["count"][:, 0], strict=True):
        assert count == (city == key).sum()


def test_a_file_that_is_not_parquet_is_named(tmp_path: Path) -> None:
    (tmp_path / "x.parquet").write_bytes(b"nope")
    with pytest.raises(JobSpecError, match=r"x\.parquet is not a readable Parquet file"):
        build_plan(JobSpec(op="column_stats", dataset=str(tmp_path / "x.parquet")))
