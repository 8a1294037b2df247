"""Results as they finish: a map job's items in completion order while it runs, and
`Client.as_completed` over jobs (real master and workers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardmill import LocalCluster
from shardmill.errors import JobSpecError, RemoteError


def test_items_stream_while_the_job_runs(cluster: LocalCluster, tmp_path: Path) -> None:
    # Given a map job whose first item waits for a file the test writes only later
    flag = tmp_path / "go"
    with cluster.client() as client:
        job = client.map(
            "sm_tasks:sum_after_flag",
            [(0, str(flag))] + [(i, "") for i in range(1, 6)],
            chunk_size=1,
        )
        # When we iterate its results in completion order
        stream = job.as_completed(timeout=60)
        early = [next(stream) for _ in range(5)]
        # Then the five others came while the first still waits, each with its index
        assert sorted(early) == [(i, i * 10) for i in range(1, 6)]
        assert job.status().state == "running"
        flag.touch()
        assert list(stream) == [(0, 0)]


def test_a_failed_job_raises_at_the_end_of_its_stream(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        job = client.map("sm_tasks:boom", [(1,)], max_attempts=1)
        with pytest.raises(RemoteError, match="boom on 1"):
            list(job)


def test_missing_shards_come_as_none_under_allow_failures(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        job = client.map(
            "sm_tasks:always_fails", [(1,), (2,)], chunk_size=1, max_attempts=1, allow_failures=2
        )
        assert sorted(job.as_completed(timeout=60)) == [(0, None), (1, None)]


def test_jobs_come_back_as_they_end(cluster: LocalCluster, tmp_path: Path) -> None:
    # Given a job that waits for a file and one that does not
    flag = tmp_path / "go"
    with cluster.client() as client:
        slow = client.map("sm_tasks:sum_after_flag", [(1, str(flag))])
        fast = client.map("sm_tasks:square", [(3,)])
        ended = client.as_completed([slow, fast], timeout=60)
        # Then the fast one comes first, and the slow one once its file exists
        assert next(ended).id == fast.id
        flag.touch()
        assert next(ended).id == slow.id
        assert slow.result(timeout=10) == [10]


def test_an_op_job_does_not_stream(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        job = client.submit("column_stats", None, synthetic={"rows": 100, "cols": 2}, shards=2)
        with pytest.raises(JobSpecError, match="not a map job"):
            list(job)
        job.result(timeout=60)
