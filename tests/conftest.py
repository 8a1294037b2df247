"""Fixtures: real shardmill processes on 127.0.0.1 with millisecond heartbeats."""

from __future__ import annotations

import compileall
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402, F401
from helpers import FAST, cluster_env  # noqa: E402
from pickled import pickle_cluster, pickle_keys  # noqa: E402
from shared import SharedCluster, warm  # noqa: E402

from shardmill import LocalCluster  # noqa: E402


def pytest_sessionstart(session: pytest.Session) -> None:
    """Bytecode for what the tests' processes import, cached as a user's Python caches it:
    written once here, not compiled again in each of the hundreds of masters, workers and CLI
    runs the tests start (the shell may set PYTHONDONTWRITEBYTECODE; 0.3 s a process)."""
    root = SUPPORT.parent.parent
    for folder in ("common", "master", "worker", "tests/support"):
        compileall.compile_dir(root / folder, quiet=1)


def _two_workers() -> LocalCluster:
    """Two workers with one slot each, importing the test task module."""
    return LocalCluster(workers=2, imports=["sm_tasks"], env=cluster_env(), **FAST)


@pytest.fixture(scope="module")
def _shared() -> Iterator[SharedCluster]:
    shared = SharedCluster(_two_workers)
    yield shared
    shared.close()


@pytest.fixture
def cluster(_shared: SharedCluster) -> LocalCluster:
    """The module's two-worker cluster, settled: no jobs, both workers registered and idle."""
    return _shared.get()


@pytest.fixture
def fresh_cluster() -> Iterator[LocalCluster]:
    """A two-worker cluster of this test's own, for tests that kill, stop or drain a role."""
    with _two_workers() as c:
        yield warm(c)


@pytest.fixture(scope="module")
def ops_cluster() -> Iterator[LocalCluster]:
    """Two workers; the master imports the user-op module too (it combines and finalizes)."""
    with LocalCluster(
        workers=2, imports=["sm_ops"], master_args=["--import", "sm_ops"], env=cluster_env(), **FAST
    ) as c:
        yield c


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CURVE keys where the default client may send pickled calls and "plain" may not."""
    return pickle_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def trusted(keys: Path) -> Iterator[LocalCluster]:
    """Two workers with --allow-pickle, on those keys."""
    with pickle_cluster(keys) as cluster:
        yield cluster


@pytest.fixture
def runs_dir(tmp_path: Path) -> str:
    d = tmp_path / "runs"
    d.mkdir()
    return str(d)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
