"""CURVE by default; strangers refused; hostile input never crashes the master or leaks."""

from __future__ import annotations

import os
import random
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from helpers import FAST, cluster_env, run_cli, wait_until

from shardmill import Client, JobSpecError, LocalCluster, ProtocolError
from shardmill.errors import JobFailed
from shardmill.wire.codec import decode, encode, pack_value
from shardmill.wire.protocol import ErrorReply, Heartbeat, Ready, ShardDone, StatusQuery, Submit
from shardmill.wire.security import Security
from shardmill.wire.spec import JobSpec

FOLDERS = ("workers", "clients", "admins")


def _jobs(cluster: LocalCluster) -> int:
    with cluster.client() as client:
        return len(client.jobs())


def test_keygen_writes_private_secrets(tmp_path: Path) -> None:
    proc = run_cli("keygen", str(tmp_path / "k"))
    assert proc.returncode == 0, proc.stderr
    for role in ("master", "worker", "client"):
        mode = stat.S_IMODE((tmp_path / "k" / f"{role}.key_secret").stat().st_mode)
        assert mode == 0o600
    folders = {f: sorted(p.name for p in (tmp_path / "k" / f).iterdir()) for f in FOLDERS}
    # one folder of public keys per port; the operator's own client is an admin
    assert folders == {
        "workers": ["worker.key"],
        "clients": ["client.key"],
        "admins": ["client.key"],
    }


class _Recorder:
    """A TCP proxy on 127.0.0.1 that keeps every byte it forwards."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        while data := _recv(src):
            with self.lock:
                self.seen += data
            try:
                dst.sendall(data)
            except OSError:
                return
        dst.close()

    def close(self) -> None:
        self.listener.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@pytest.mark.parametrize("secure", [True, False])
def test_traffic_on_the_wire_is_not_plaintext(secure: bool) -> None:
    marker = "PLAINTEXT-MARKER-7f3a9c"
    with LocalCluster(
        workers=1, imports=["sm_tasks"], env=cluster_env(), insecure=not secure, **FAST
    ) as cluster:
        proxy = _Recorder(cluster.client_address)
        try:
            with cluster.client() as direct:
                keys = direct.security.keys
            with Client(proxy.address, keys=keys, insecure=not secure) as client:
                assert client.call("sm_tasks:add", marker, "!", timeout=30) == marker + "!"
        finally:
            proxy.close()
    with proxy.lock:
        seen = bytes(proxy.seen)
    assert len(seen) > 100
    # the control case shows the recorder would catch plaintext
    assert (marker.encode() in seen) is (not secure)


def _hostile(
    cluster: LocalCluster, address: str, role: str, identity: bytes = b""
) -> zmq.Socket[bytes]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity:  # as a worker does: the master reads a worker only under the id it set
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    Security(Path(str(cluster.keys_dir))).client(sock, role)
    sock.connect(address)
    return sock


def _valid_messages() -> list[list[bytes]]:
    spec = JobSpec(op="map", function="sm_tasks:square")
    packed = pack_value([[1], [2]])
    msgs = [
        encode(Submit(spec=spec, parts=[packed.data], part_counts=[2], part_arrays=[0])),
        encode(StatusQuery(job_id="nope")),
        encode(Heartbeat()),
        encode(Ready(slots=1, hostname="h", pid=1, version="0.1.0")),
        encode(ShardDone(job_id="x", shard=0, attempt=1, payload=packed.data)),
    ]
    return [[bytes(f) for f in m] for m in msgs]


def _mutate(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    out = [bytearray(f) for f in frames]
    choice = rng.randrange(5)
    target = out[rng.randrange(len(out))]
    if choice == 0 and target:
        for _ in range(rng.randint(1, 4)):
            target[rng.randrange(len(target))] = rng.randrange(256)
    elif choice == 1:
        del target[rng.randrange(len(target) + 1) :]
    elif choice == 2:
        target += rng.randbytes(rng.randint(1, 16))
    elif choice == 3:
        header = msgpack.unpackb(bytes(out[0]))
        key = rng.choice(list(header))
        header[key] = rng.choice([None, -1, 2**63, "x" * 50, [1, 2], {"a": 1}, 1.5, b"\0"])
        out[0] = bytearray(msgpack.packb(header))
    else:
        out.append(bytearray(rng.randbytes(rng.randint(0, 32))))
    return [bytes(f) for f in out]


def test_fuzzed_frames_on_both_sockets_never_crash_the_master(cluster: LocalCluster) -> None:
    rng = random.Random(20261126)
    valid = _valid_messages()
    for address, role in ((cluster.worker_address, "worker"), (cluster.client_address, "client")):
        sock = _hostile(cluster, address, role)
        try:
            for i in range(3000):  # bounded: thousands of random and mutated frames
                if i % 3 == 0:
                    frames = [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 3))]
                else:
                    frames = _mutate(rng, rng.choice(valid))
                sock.send_multipart(frames)
            # a probe whose error reply names it: the master is alive and reads this socket
            sock.send_multipart([msgpack.packb({"v": "after-fuzz", "kind": "jobs"})])
            wait_until(
                lambda s=sock: _drain_for_error(s, "after-fuzz"),  # type: ignore[misc]
                timeout=60,
                what="the master to answer after the fuzzing",
            )
        finally:
            sock.close()
    # fake workers registered by mutated READYs expire; the real ones serve a real job
    with cluster.client() as client:
        wait_until(lambda: len(client.workers()) == 2, what="only the real workers left")
        assert client.map("sm_tasks:square", [(i,) for i in range(30)]).result(timeout=60) == [
            i * i for i in range(30)
        ]
    assert cluster.master is not None and cluster.master.poll() is None


def _drain_for_error(sock: zmq.Socket[bytes], needle: str) -> bool:
    while sock.poll(0):
        msg = decode(sock.recv_multipart()).msg
        if isinstance(msg, ErrorReply) and needle in msg.message:
            return True
    return False


def test_a_worker_with_another_version_is_refused_by_name(cluster: LocalCluster) -> None:
    sock = _hostile(cluster, cluster.worker_address, "worker", identity=b"old-version-worker")
    try:
        sock.send_multipart(encode(Ready(slots=1, hostname="h", pid=1, version="9.9.9")))
        assert sock.poll(10_000)
        reply = decode(sock.recv_multipart()).msg
        assert isinstance(reply, ErrorReply) and reply.code == "version"
        assert "9.9.9" in reply.message and "0.1.0" in reply.message
    finally:
        sock.close()
    with cluster.client() as client:
        assert len(client.workers()) == 2


@pytest.fixture
def limited() -> Iterator[LocalCluster]:
    args = [
        "--max-message-bytes",
        str(2**20),
        "--max-shards",
        "10",
        "--max-queued-jobs",
        "2",
        "--max-result-bytes",
        "4096",
    ]
    with LocalCluster(
        workers=1, imports=["sm_tasks"], env=cluster_env(), master_args=args, **FAST
    ) as cluster:
        yield cluster


def test_limits_give_the_sender_a_clear_error(limited: LocalCluster, tmp_path: Path) -> None:
    flag = tmp_path / "release"
    with limited.client() as client:
        client.shared_memory = False  # the limit is on bytes that cross the socket
        with pytest.raises(ProtocolError, match="exceeds the limit"):
            client.map("sm_tasks:describe", [(np.zeros(200_000),)])
        client.shared_memory = True
        with pytest.raises(JobSpecError, match="max_shards"):
            client.map("sm_tasks:square", [(i,) for i in range(20)], chunk_size=1)
        big = client.map("sm_tasks:scale", [(np.ones(10_000), 2.0)])
        with pytest.raises(JobFailed, match="max_result_bytes"):
            big.result(timeout=30)
        blockers = [client.map("sm_tasks:wait_for_file", [(str(flag),)]) for _ in range(2)]
        with pytest.raises(JobSpecError, match="max_queued_jobs"):
            client.map("sm_tasks:square", [(1,)])
        flag.touch()
        for job in blockers:
            job.result(timeout=30)
        # nothing else happened: the master serves the next request normally
        assert client.call("sm_tasks:square", 7, timeout=30) == 49


def test_datasets_outside_the_data_roots_are_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    outside = Path("/etc/hostname")
    link = tmp_path / "sneaky.npy"
    link.symlink_to(outside)
    with cluster.client() as client:
        traversal = str(tmp_path) + "/.." * len(tmp_path.parts) + "/etc/hostname"
        for path in (traversal, str(link)):
            with pytest.raises(JobSpecError, match="outside the master's data roots"):
                client.submit("column_stats", path)
        assert client.jobs() == []


__all__ = ["os"]
