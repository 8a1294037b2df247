"""LocalCluster's start: master and workers at once, children forked from the agent."""

from __future__ import annotations

import socket
from pathlib import Path

from helpers import FAST, cluster_env

from shardmill import LocalCluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _parent(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid in /proc/{pid}/status")


def test_workers_follow_the_master_port_and_a_forked_child_is_replaced(tmp_path: Path) -> None:
    # Given a master told its port in master_args (not the one LocalCluster picked for it)
    port = _free_port()
    with (
        LocalCluster(
            workers=1,
            imports=["sm_tasks"],
            env=cluster_env(),
            master_args=["--port", str(port)],
            **FAST,
        ) as cluster,
        cluster.client() as client,
    ):
        # Then the worker connected to that port
        assert cluster.worker_address.endswith(f":{port}")
        assert len(client.workers()) == 1
        # When the agent's first child (forked from it) dies mid-task
        assert client.call("sm_tasks:segfault_first", str(tmp_path), "k", timeout=60) == "survived"
        # Then the task ran again in a fresh child of the same agent
        first, second = (int(p) for p in (tmp_path / "k.runs").read_text().split())
        assert first != second
        assert _parent(second) == cluster.workers[0].pid
