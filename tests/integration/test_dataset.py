"""column_stats over a .npy on a real cluster, and the spec errors that are refused at submit."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from shardmill import Client, JobSpecError, LocalCluster, MasterUnreachable
from shardmill.cli.demo import generate


@pytest.fixture(scope="module")
def big_npy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "big.npy"
    generate(path, 1_000_000, 10, seed=1)
    return path


def test_column_stats_on_1m_by_10_equals_numpy(cluster: LocalCluster, big_npy: Path) -> None:
    # Given a 1,000,000 x 10 float64 .npy / When column_stats runs in 32 shards
    with cluster.client() as client:
        job = client.submit("column_stats", big_npy, shards=32)
        stats = job.result(timeout=120)
        info = job.status(shards=True)
    # Then every statistic equals NumPy's on the whole array within 1e-9
    data = np.load(big_npy)
    assert stats["count"] == 1_000_000
    for key, want in [
        ("mean", data.mean(0)),
        ("std", data.std(0)),
        ("min", data.min(0)),
        ("max", data.max(0)),
        ("sum", data.sum(0)),
    ]:
        np.testing.assert_allclose(stats[key], want, rtol=1e-9, atol=1e-9, err_msg=key)
    # And each of the 32 shards was merged exactly once
    assert stats["shards_merged"] == 32
    assert info.shards is not None and [s.merged for s in info.shards] == [1] * 32


def test_integer_and_1d_data(cluster: LocalCluster, tmp_path: Path) -> None:
    path = tmp_path / "ints.npy"
    data = np.arange(1001, dtype=np.int32)
    np.save(path, data)
    with cluster.client() as client:
        stats = client.submit("column_stats", path, shards=7).result(timeout=60)
    assert stats["count"] == 1001
    np.testing.assert_allclose(stats["mean"], [data.mean()])
    np.testing.assert_allclose(stats["std"], [data.std()])


def test_more_shards_than_rows_and_empty_data(cluster: LocalCluster, tmp_path: Path) -> None:
    small, empty = tmp_path / "small.npy", tmp_path / "empty.npy"
    np.save(small, np.ones((3, 2)))
    np.save(empty, np.ones((0, 2)))
    with cluster.client() as client:
        stats = client.submit("column_stats", small, shards=10).result(timeout=60)
        assert stats["count"] == 3 and stats["shards_merged"] == 3
        assert client.submit("column_stats", empty, shards=4).result(timeout=60)["count"] == 0


def test_bad_specs_are_refused_at_submit(cluster: LocalCluster, tmp_path: Path) -> None:
    strings = tmp_path / "strings.npy"
    np.save(strings, np.array([["a", "b"]]))
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not a numpy file at all")
    with cluster.client() as client:
        with pytest.raises(JobSpecError, match=r"dataset: .*missing\.npy does not exist"):
            client.submit("column_stats", tmp_path / "missing.npy")
        with pytest.raises(JobSpecError, match="needs a numeric dtype"):
            client.submit("column_stats", strings)
        with pytest.raises(JobSpecError, match=r"not a readable \.npy"):
            client.submit("column_stats", garbage)
        with pytest.raises(JobSpecError, match="is not a file"):
            client.submit("column_stats", tmp_path)
        with pytest.raises(JobSpecError, match="shards: Input should be greater than or equal"):
            client.submit("column_stats", strings, shards=0)
        with pytest.raises(JobSpecError, match="unknown op 'median'"):
            client.submit("median", strings)
        with pytest.raises(JobSpecError, match="function"):
            client.map("no colon here", [(1,)])
        # And nothing was created by any of them
        assert client.jobs() == []


def test_unreachable_master_is_reported_after_the_connect_timeout() -> None:
    # Given no master on this port / When a client asks / Then it says so and does not hang
    start = time.monotonic()
    with (
        Client("tcp://127.0.0.1:9", connect_timeout=0.5, insecure=True) as client,
        pytest.raises(MasterUnreachable, match="no answer from the master"),
    ):
        client.workers()
    assert time.monotonic() - start < 5
