"""Bundles on the worker socket, from a protocol-speaking stand-in for a worker agent (a real
DEALER socket with a worker key, a real master): a bundle's parts are taken in the order sent,
its results fed to the brain together, and what the master sends comes bundled too."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import zmq
from faults import assert_merged_once, attempts
from helpers import cluster_env, wait_until

from shardmill import LocalCluster, __version__
from shardmill.ops.registry import Registry
from shardmill.wire.codec import bundle, decode, encode, unbundle
from shardmill.wire.protocol import Disconnect, Ready, Task
from shardmill.wire.security import Security
from shardmill.worker.executor import run_task

SHARDS = 6


def _worker(cluster: LocalCluster) -> zmq.Socket[bytes]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"stand-in")
    Security(Path(str(cluster.keys_dir))).client(sock, "worker")
    sock.connect(cluster.worker_address)
    hello = Ready(slots=SHARDS, hostname="here", pid=os.getpid(), version=__version__)
    sock.send_multipart(encode(hello.model_copy(update={"modules": ["sm_tasks"]})))
    return sock


def _tasks(sock: zmq.Socket[bytes], n: int) -> tuple[list[tuple[Task, list[Any]]], int]:
    """The first `n` tasks the master sends, and how many zmq messages carried them."""
    tasks: list[tuple[Task, list[Any]]] = []
    messages = 0
    deadline = time.monotonic() + 30
    while len(tasks) < n:
        assert sock.poll(max(1, int((deadline - time.monotonic()) * 1000))), f"got {tasks}"
        parts = unbundle(sock.recv_multipart())
        messages += any(isinstance(decode(p).msg, Task) for p in parts)
        for part in parts:
            decoded = decode(part)
            if isinstance(decoded.msg, Task):
                tasks.append((decoded.msg, decoded.arrays))
    return tasks, messages


def test_a_bundle_of_results_then_a_disconnect_is_taken_in_order() -> None:
    cluster = LocalCluster(workers=0, imports=["sm_tasks"], env=cluster_env())
    with cluster, cluster.client() as client:
        sock = _worker(cluster)
        try:
            # Given a job whose shards the master sends to our one stand-in worker
            job = client.map("sm_tasks:square", [(i,) for i in range(SHARDS)], chunk_size=1)
            tasks, messages = _tasks(sock, SHARDS)
            # (decided in one turn of the master's loop, they came as fewer messages)
            assert messages < SHARDS
            # When it answers every shard and then disconnects, all in one bundle
            registry = Registry(["sm_tasks"])
            replies = [encode(*run_task(task, arrays, registry)) for task, arrays in tasks]
            sock.send_multipart(bundle([*replies, encode(Disconnect())]))
            # Then every result is merged before the disconnect is handled: nothing runs again
            # (there is no other worker: a requeued shard would never finish)
            assert job.result(timeout=30) == [i * i for i in range(SHARDS)]
            assert_merged_once(job)
            assert [a.outcome for a in attempts(job)] == ["ok"] * SHARDS
            wait_until(lambda: client.workers() == [], what="the stand-in to be gone")
        finally:
            sock.close()
