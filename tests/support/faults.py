"""Helpers for fault tests: find processes, check a job's shards were merged exactly once."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from helpers import wait_until

from shardmill import Client, Job, LocalCluster
from shardmill.wire.protocol import AttemptInfo

# Outcomes that charge the shard nothing: merged, a backup the other attempt beat, a second
# copy of a merged result (dropped)
UNCHARGED = ("ok", "superseded", "duplicate")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def read_pid(runs_dir: str, key: str) -> int:
    path = Path(runs_dir) / f"{key}.pid"
    wait_until(lambda: path.exists() and path.read_text().strip(), what=f"{path} to be written")
    return int(path.read_text())


def assert_merged_once(job: Job) -> None:
    info = job.status(shards=True)
    assert info.state == "done", info
    assert info.shards is not None
    merged = [s.merged for s in info.shards]
    assert merged == [1] * len(merged), f"merge counts per shard: {merged}"


def attempts(job: Job) -> list[AttemptInfo]:
    """Every attempt of every shard of the job, in shard order."""
    return [a for s in job.status(shards=True).shards or [] for a in s.history]


def worker_of(client: Client, job: Job) -> str:
    """The worker currently running one of the job's shards."""

    def running() -> str | None:
        shards = job.status(shards=True).shards or []
        return next((s.worker for s in shards if s.state == "leased" and s.worker), None)

    return wait_until(running, what="a shard to be running")


def agent_pid(client: Client, worker_id: str) -> int:
    return next(w.pid for w in client.workers() if w.worker_id == worker_id)


def pid_of_child(agent: int) -> list[int]:
    try:
        text = Path(f"/proc/{agent}/task/{agent}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


__all__ = [
    "agent_pid",
    "alive",
    "assert_merged_once",
    "attempts",
    "os",
    "pid_of_child",
    "read_pid",
    "worker_of",
]


class WaitingClient:
    """A client in another thread blocked on a job's result, as a user's script would be."""

    def __init__(self, cluster: LocalCluster, job_id: str, timeout: float = 120.0) -> None:
        self.got: dict[str, Any] = {}

        def wait() -> None:
            with cluster.client() as client:
                self.got["result"] = client.job(job_id).result(timeout=timeout)

        self.thread = threading.Thread(target=wait)
        self.thread.start()

    def join(self, timeout: float = 120.0) -> None:
        self.thread.join(timeout=timeout)
