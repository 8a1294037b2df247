"""Garbage, wrong versions and wrong kinds on both master sockets: error replies, no crash."""

from __future__ import annotations

import os
import random
from pathlib import Path

import msgpack
import zmq

from shardmill import LocalCluster, __version__
from shardmill.wire.codec import bundle, decode, encode, unbundle
from shardmill.wire.protocol import ErrorReply, Heartbeat, JobsQuery, Ready, Reregister
from shardmill.wire.security import Security


def _dealer(
    cluster: LocalCluster, address: str, role: str, identity: bytes = b"hostile-1"
) -> zmq.Socket[bytes]:
    """An authenticated but hostile peer: it holds real keys and sends garbage. On the worker
    port it sets its own id, as a worker does (one without is refused: see the test below)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if role == "worker" and identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    Security(Path(str(cluster.keys_dir))).client(sock, role)
    sock.connect(address)
    return sock


def _reply(sock: zmq.Socket[bytes]) -> ErrorReply:
    """The next error reply; a REREGISTER before it (the master asks a worker id it does not
    know to register, in a bundle with what else it had for it) is skipped."""
    while True:
        assert sock.poll(10_000), "the master sent no error reply"
        for part in unbundle(sock.recv_multipart()):
            msg = decode(list(part)).msg
            if not isinstance(msg, Reregister):
                assert isinstance(msg, ErrorReply), msg
                return msg


def test_garbage_on_both_sockets_then_a_job_completes(cluster: LocalCluster) -> None:
    rng = random.Random(1234)
    for address, role in ((cluster.worker_address, "worker"), (cluster.client_address, "client")):
        sock = _dealer(cluster, address, role)
        try:
            # Given random bytes / Then each gets a protocol error reply
            for _ in range(200):
                frames = [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 3))]
                sock.send_multipart(frames)
                assert _reply(sock).code == "protocol"
            # Given a wrong protocol version / Then the reply names both versions
            sock.send_multipart([msgpack.packb({"v": 99, "kind": "jobs", "req": 1})])
            reply = _reply(sock)
            assert "99" in reply.message and "speaks 1" in reply.message
            # Given an unknown kind / Then it is refused by name
            sock.send_multipart([msgpack.packb({"v": 1, "kind": "launch_missiles"})])
            assert "launch_missiles" in _reply(sock).message
            # Given a well-formed message on the wrong socket / Then it is refused
            wrong = JobsQuery() if address == cluster.worker_address else Heartbeat()
            sock.send_multipart(encode(wrong))
            assert _reply(sock).code == "protocol"
            # Given array frames that do not match / Then they are refused, not trusted
            sock.send_multipart([*encode(Heartbeat()), b"extra"])
            if address == cluster.client_address:
                assert "not a client request" in _reply(sock).message
            # Given a bundle: its bad parts are refused one by one, its good ones served
            bad = [msgpack.packb({"v": 1, "kind": "launch_missiles"})]
            sock.send_multipart(bundle([bad, encode(Heartbeat()), [b"\xc1"]]))
            if address == cluster.worker_address:
                assert "launch_missiles" in _reply(sock).message
                assert "not valid msgpack" in _reply(sock).message
            else:  # clients send one message at a time
                assert "do not nest" in _reply(sock).message
            header = {"kind": "bundle", "v": 1, "counts": [5]}
            sock.send_multipart([msgpack.packb(header), b"x"])
            assert _reply(sock).code == "protocol"
        finally:
            sock.close()
    # Then the master still serves everyone: a real job completes
    with cluster.client() as client:
        assert client.map("sm_tasks:square", [(i,) for i in range(50)]).result(timeout=60) == [
            i * i for i in range(50)
        ]
        assert len(client.workers()) == 2


def test_a_worker_port_peer_without_an_id_of_its_own_is_refused(cluster: LocalCluster) -> None:
    # Given a peer with a real worker key that sets no id (ZeroMQ makes one up)
    sock = _dealer(cluster, cluster.worker_address, "worker", identity=b"")
    try:
        # When it says READY / Then it is refused, naming the fix, and never registered
        ready = Ready(slots=1, hostname="h", pid=os.getpid(), version=__version__)
        sock.send_multipart(encode(ready))
        reply = _reply(sock)
        assert reply.code == "identity" and "zmq.IDENTITY" in reply.message
        with cluster.client() as client:
            assert all(not w.worker_id.startswith("0x00") for w in client.workers())
    finally:
        sock.close()
