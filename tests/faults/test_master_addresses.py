"""Several master addresses: workers and clients follow whichever master answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from helpers import FAST, cluster_env, run_cli

from shardmill import Client, LocalCluster


def _silent_address() -> str:
    """A loopback address no one listens on (the kernel's pick, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        workers=0, imports=["sm_tasks"], insecure=True, env=cluster_env(), **FAST
    ) as c:
        yield c


def test_a_worker_and_a_client_find_the_master_behind_a_silent_address(
    cluster: LocalCluster,
) -> None:
    # Given a worker and a client told of a silent address first, then the master's
    silent = _silent_address()
    cluster.add_worker("--master", f"{silent},{cluster.worker_address}")
    with Client(f"{silent},{cluster.client_address}", insecure=True, connect_timeout=2) as c:
        # When a job runs
        job = c.map("sm_tasks:add", [(i, i) for i in range(20)], chunk_size=1)
        # Then the worker found the master and the result is exact
        assert job.result(timeout=60) == [2 * i for i in range(20)]


def test_a_bad_address_among_several_is_named_with_the_fix(cluster: LocalCluster) -> None:
    # When one of the addresses is not a ZeroMQ address
    proc = run_cli("jobs", master=f"{cluster.client_address},b:5556")
    # Then the CLI names it and shows the form that works
    assert proc.returncode != 0
    assert "'b:5556' is not a ZeroMQ address" in proc.stderr
    assert "tcp://a:5556,tcp://b:5556" in proc.stderr
