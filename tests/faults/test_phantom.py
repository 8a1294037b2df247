"""The phantom worker (issue 36): a worker that reconnects with its id while the master is busy
leaves its old connection's messages under an id ZeroMQ made up. They must never register a
worker, be leased shards or charge an attempt. Real master, a real worker key, real sockets."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from helpers import FAST, cluster_env, wait_until

from shardmill import LocalCluster, __version__
from shardmill.master.store import DB_NAME
from shardmill.wire.codec import decode, encode
from shardmill.wire.protocol import Ping, Ready
from shardmill.wire.security import Security


@pytest.fixture
def idle_master(tmp_path: Path) -> Iterator[LocalCluster]:
    """No workers; a state dir, whose database the test can hold locked to stall the master."""
    state = tmp_path / "state"
    with LocalCluster(
        workers=0, imports=["sm_tasks"], env=cluster_env(), state_dir=state, **FAST
    ) as c:
        yield c


def _dealer(cluster: LocalCluster, role: str, identity: bytes = b"") -> zmq.Socket[bytes]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    Security(Path(str(cluster.keys_dir))).client(sock, role)
    return sock


def _connected(cluster: LocalCluster, sock: zmq.Socket[bytes]) -> zmq.Socket[bytes]:
    """`sock` connected to the worker port, once its handshake is done."""
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)  # before the connect
    sock.connect(cluster.worker_address)
    try:
        assert monitor.poll(10_000), "no handshake with the master"
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
    return sock


def _ready() -> list[bytes]:
    return encode(Ready(slots=1, hostname="stand-in", pid=os.getpid(), version=__version__))


def _busy(pinger: zmq.Socket[bytes]) -> None:
    """Until a ping goes unanswered for 0.2 s: the master's own thread is busy (the ping's
    answer stays unread: it tells when the master turned its loop again)."""
    for req in range(1, 10_000):
        pinger.send_multipart(encode(Ping(req=req)))
        if not pinger.poll(200):
            return
        decode(pinger.recv_multipart())
    pytest.fail("the master never got busy")


def _reconnect_while_busy(cluster: LocalCluster, identity: bytes) -> tuple[bool, zmq.Socket]:
    """A stand-in worker says READY on one connection, closes it and says READY on a new one
    with the same id while the master is busy. True when the master turned its loop only
    after the new connection's handshake: the race is set.

    Busy: a submit waits on the master's state database, which the test holds locked (BEGIN
    IMMEDIATE), as a master stalled on a slow disk would. SQLite waits without the GIL, so
    the master's ZAP thread still admits the new connection meanwhile. (A big by-value submit
    kept the master busy too, but in msgpack, holding the GIL: the handshake then finished
    only when the loop turned, and the race set only by luck.)"""
    first = _connected(cluster, _dealer(cluster, "worker", identity))
    pinger = _dealer(cluster, "client")
    pinger.connect(cluster.client_address)
    lock = sqlite3.connect(Path(str(cluster.state_dir)) / DB_NAME, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the master's next write waits (5 s at most) for it
    client = cluster.client()
    sender = threading.Thread(target=lambda: client.map("sm_tasks:square", [(1,)]))
    sender.start()
    try:
        _busy(pinger)
        first.send_multipart(_ready())
        first.close(linger=2000)  # its READY still leaves
        second = _connected(cluster, _dealer(cluster, "worker", identity))
        second.send_multipart(_ready())
        answered = pinger.poll(0)
        return not answered, second
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        sender.join(timeout=60)
        pinger.close(linger=0)
        client.close()


def _phantoms(cluster: LocalCluster, job_id: str) -> list[str]:
    """Workers under ids ZeroMQ made up: registered now, or lost holding a shard of the job."""
    with cluster.client() as client:
        workers = [w.worker_id for w in client.workers()]
        lost = client.status(job_id).lost_workers
    return [w for w in workers + lost if w.startswith("0x00")]


def _refused(cluster: LocalCluster) -> float:
    with cluster.client() as client:
        text = client.metrics()
    head = 'shardmill_unnamed_messages_total{outcome="refused"} '
    return sum(float(line[len(head) :]) for line in text.splitlines() if line.startswith(head))


def test_a_worker_reconnecting_while_the_master_is_busy_leaves_no_phantom(
    idle_master: LocalCluster,
) -> None:
    # Given queued shards and no worker
    with idle_master.client() as client:
        job = client.map("sm_tasks:square", [(i,) for i in range(8)], chunk_size=1)
    # When a stand-in worker reconnects with its id while the master is busy (tried until
    # the timing sets the race: the old connection's READY unread when the new one arrives)
    for trial in range(8):
        raced, standin = _reconnect_while_busy(idle_master, f"stand-in-{trial}".encode())
        standin.close(linger=0)
        if raced:
            break
    else:
        pytest.fail("the race never set up in 8 tries: the master was never busy long enough")
    # Then the old connection's READY is refused, or (the bug) a phantom registers, is leased
    # a shard and is lost holding it, within its expiry (0.5 s)
    wait_until(
        lambda: _refused(idle_master) or _phantoms(idle_master, job.id),
        what="the old connection's READY read",
    )
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert _phantoms(idle_master, job.id) == []
