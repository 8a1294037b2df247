"""Fixtures: real shardmill processes on 127.0.0.1 with millisecond heartbeats."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402, F401
from helpers import FAST, cluster_env  # noqa: E402

from shardmill import LocalCluster  # noqa: E402


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """Two workers with one slot each, importing the test task module."""
    with LocalCluster(workers=2, imports=["sm_tasks"], env=cluster_env(), **FAST) as c:
        # Both children ready (imports done): a shard leased before that waits in its agent,
        # which the fault tests' timing (a signal "mid-shard") must not depend on.
        with c.client() as client:
            warm = client.map("sm_tasks:square", [(i,) for i in range(4)], chunk_size=1)
            assert warm.result(timeout=60) == [0, 1, 4, 9]
            client.prune(0)  # tests start with no jobs
        yield c


@pytest.fixture(scope="module")
def ops_cluster() -> Iterator[LocalCluster]:
    """Two workers; the master imports the user-op module too (it combines and finalizes)."""
    with LocalCluster(
        workers=2, imports=["sm_ops"], master_args=["--import", "sm_ops"], env=cluster_env(), **FAST
    ) as c:
        yield c


@pytest.fixture
def runs_dir(tmp_path: Path) -> str:
    d = tmp_path / "runs"
    d.mkdir()
    return str(d)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
