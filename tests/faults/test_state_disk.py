"""The state dir's disk refuses writes: the master stops with an error and loses nothing."""

from __future__ import annotations

import os
import resource
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from faults import WaitingClient, assert_merged_once
from helpers import FAST, cluster_env, wait_until

from shardmill import LocalCluster, exitcodes
from shardmill.errors import ServerError

SHARDS = 4


@contextmanager
def _stderr_into_pipe() -> Iterator[list[bytes]]:
    """Processes started inside write their stderr to a pipe this test reads. Not to pytest's
    capture file: the master's file size limit would cover that file as well."""
    r, w = os.pipe()
    chunks: list[bytes] = []

    def read() -> None:
        while chunk := os.read(r, 65536):  # until every child holding the pipe has exited
            chunks.append(chunk)
        os.close(r)

    threading.Thread(target=read, daemon=True).start()
    saved = os.dup(2)
    os.dup2(w, 2)
    os.close(w)
    try:
        yield chunks
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@pytest.fixture
def disk_cluster(tmp_path: Path) -> Iterator[tuple[LocalCluster, list[bytes]]]:
    with (
        _stderr_into_pipe() as stderr,
        LocalCluster(
            workers=2,
            imports=["sm_tasks"],
            env=cluster_env(),
            state_dir=tmp_path / "state",
            **FAST,
        ) as cluster,
    ):
        yield cluster, stderr


def _disk_full(cluster: LocalCluster) -> None:
    """No write past the first byte of any file: every checkpoint write fails with EFBIG. Not
    "no file may grow": SQLite rewrites a checkpointed WAL from its start, and those writes
    would still fit, so the failure would come at no predictable commit."""
    assert cluster.master is not None
    resource.prlimit(cluster.master.pid, resource.RLIMIT_FSIZE, (1, 1))


def _assert_stopped_on_the_disk(cluster: LocalCluster, stderr: list[bytes]) -> None:
    assert cluster.master is not None and cluster.state_dir is not None
    assert cluster.master.wait(timeout=30) == exitcodes.STATE
    if cluster.master.stdout is not None:  # start_master() opens a new one
        cluster.master.stdout.close()
    text = wait_until(
        lambda: b"free space or make it writable" in b"".join(stderr) and b"".join(stderr),
        what="the master's error on stderr",
    ).decode()
    assert f"cannot write the checkpoint in {cluster.state_dir}" in text, text
    assert "disk I/O error" in text and "file size limit" in text, text
    assert "resumes every job from the last commit" in text, text


def _blocked_job(cluster: LocalCluster, flag: Path) -> str:
    """A map job whose tasks block until `flag` appears; its id."""
    with cluster.client() as client:
        job = client.map(
            "sm_tasks:pid_and_wait", [(str(flag), i) for i in range(SHARDS)], chunk_size=1
        )
    return job.id


def _started_on_disk(cluster: LocalCluster, job_id: str) -> None:
    """Wait until the job's start is committed (its first lease writes `started_at` with the
    next group commit): a full disk after that fails the cancel's own commit, not this one."""
    assert cluster.state_dir is not None
    uri = f"file:{Path(cluster.state_dir) / 'shardmill.db'}?mode=ro"

    def started() -> bool:
        with sqlite3.connect(uri, uri=True) as db:
            row = db.execute("SELECT started_at FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return row is not None and row[0] is not None

    wait_until(started, what="the job's start in the state dir")


def test_a_full_disk_stops_the_master_and_the_next_one_resumes(
    disk_cluster: tuple[LocalCluster, list[bytes]], tmp_path: Path
) -> None:
    cluster, stderr = disk_cluster
    flag = tmp_path / "go"
    # Given a map job whose tasks block until a flag file appears, and a client waiting on it
    job_id = _blocked_job(cluster, flag)
    waiter = WaitingClient(cluster, job_id)
    # When the state dir's disk is full from now on, and results arrive that must be committed
    _disk_full(cluster)
    flag.touch()
    # Then the master stops with the state exit code and says where, why and what to do
    _assert_stopped_on_the_disk(cluster, stderr)
    # And the waiting client heard nothing of the job from it
    assert "result" not in waiter.got
    # And when a master starts again without the limit, the job completes, every shard once
    cluster.start_master()
    waiter.join()
    assert [x for _, x in waiter.got["result"]] == list(range(SHARDS))
    with cluster.client() as client:
        assert_merged_once(client.job(job_id))


def test_a_submit_the_disk_refuses_is_not_accepted(
    disk_cluster: tuple[LocalCluster, list[bytes]],
) -> None:
    cluster, stderr = disk_cluster
    # Given a master whose state dir's disk is full
    _disk_full(cluster)
    # When a job is submitted / Then it is refused with code "state", and the master stops
    with cluster.client() as client, pytest.raises(ServerError) as refused:
        client.map("sm_tasks:square", [(i,) for i in range(SHARDS)])
    assert refused.value.code == "state" and "job not accepted" in str(refused.value)
    _assert_stopped_on_the_disk(cluster, stderr)
    # And the next master knows of no job
    cluster.start_master()
    with cluster.client() as client:
        assert client.jobs() == []


def test_a_cancel_the_disk_refuses_is_answered_so_and_the_job_lives_on(
    disk_cluster: tuple[LocalCluster, list[bytes]], tmp_path: Path
) -> None:
    cluster, stderr = disk_cluster
    flag = tmp_path / "go"
    job_id = _blocked_job(cluster, flag)
    _started_on_disk(cluster, job_id)
    # Given a running job and a state dir that takes no more writes
    _disk_full(cluster)
    # When the job is cancelled / Then the client hears it was not recorded, and why
    with cluster.client() as client, pytest.raises(ServerError) as refused:
        client.cancel(job_id)
    assert refused.value.code == "state", refused.value
    assert "cancel not recorded, the master is stopping" in str(refused.value)
    _assert_stopped_on_the_disk(cluster, stderr)
    # And the next master still has the job, which runs to the end
    cluster.start_master()
    flag.touch()
    with cluster.client() as client:
        again = client.job(job_id)
        assert [x for _, x in again.result(timeout=120)] == list(range(SHARDS))
        assert_merged_once(again)
