"""Many workers on one master: simulated workers, a few processes holding many sockets.

Each simulated worker is a DEALER socket that speaks the worker protocol as an agent does
(READY with CURVE worker keys, heartbeats at the master's interval, MasterPing echoes, results
per task) and runs each task in-line with the runtime's own executor code (`run_task`), so
results are real and checked; what it leaves out is the child process per slot. The master
is a real one (`LocalCluster(workers=0)`), at the default heartbeat interval.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import zmq
from bench_context import Bench
from bench_harness import SHARDMILL, Metric, Target, cluster_env, cpu_seconds, vm_hwm_mib

from shardmill import LocalCluster, __version__
from shardmill.ops.registry import Registry
from shardmill.wire.codec import decode, encode
from shardmill.wire.protocol import (
    Heartbeat,
    MasterPing,
    Ready,
    Reregister,
    Task,
    Welcome,
)
from shardmill.wire.security import Security
from shardmill.worker.executor import run_task

try:  # the fakes speak the protocol of the runtime under test (--rev: older ones, no bundles)
    from shardmill.wire.codec import bundles, unbundle
except ImportError:  # pragma: no cover - a revision before bundles (7d1caaf and older)

    def unbundle(frames: Any) -> list[Any]:  # type: ignore[misc]
        return [frames]

    def bundles(parts: Any, **limits: int) -> Any:  # type: ignore[misc]
        return iter(parts)


PROCESSES = 4  # simulated workers are spread over this many processes
IDLE_SECONDS = 5.0  # master CPU with only heartbeats flowing is measured over this long
CONNECT_TIMEOUT = 120.0


def many_workers(b: Bench) -> list[Metric]:
    n_workers, n_shards = b.sizes.many_workers, b.sizes.many_shards
    rates, per_shard, idle, rss = [], [], [], []
    with LocalCluster(workers=0, imports=["bench_tasks"], env=cluster_env()) as cluster:
        master = cluster.master
        assert master is not None and cluster.keys_dir is not None
        stop = multiprocessing.get_context("spawn").Event()
        fakes = _start_fakes(cluster.worker_address, cluster.keys_dir, n_workers, stop)
        try:
            with cluster.client() as client:
                _wait_workers(client, n_workers, fakes)
                for _ in range(b.heavy_reps):
                    b.settle()
                    cpu0, t0 = cpu_seconds(master.pid), time.perf_counter()
                    time.sleep(IDLE_SECONDS)  # measuring a steady state, not waiting for one
                    idle.append((cpu_seconds(master.pid) - cpu0) / (time.perf_counter() - t0))
                    cpu0, t0 = cpu_seconds(master.pid), time.perf_counter()
                    job = client.map(
                        "bench_tasks:noop1", [(i,) for i in range(n_shards)], chunk_size=1
                    )
                    if job.result(timeout=600) != list(range(n_shards)):
                        raise RuntimeError("many workers: wrong results")
                    seconds = time.perf_counter() - t0
                    rates.append(n_shards / seconds)
                    per_shard.append((cpu_seconds(master.pid) - cpu0) / n_shards * 1e6)
                    client.prune(0)
                busy = sum(1 for w in client.workers() if w.shards_done > 0)
            rss.append(vm_hwm_mib(master.pid))
        finally:
            stop.set()
            for p in fakes:
                p.join(10)
                if p.is_alive():
                    p.kill()
    what = f"{n_workers} simulated workers"
    return [
        Metric(
            "many-dispatch",
            f"many workers: {n_shards:,}-shard job (chunk_size=1) on {what}",
            "shards/s",
            True,
            target=Target(">=", 5000),
            note=f"{busy} of {n_workers} workers ran shards",
        ).add(SHARDMILL, rates),
        Metric(
            "many-master-cpu",
            f"many workers: master CPU per shard, {what}",
            "µs",
            False,
        ).add(SHARDMILL, per_shard),
        Metric(
            "many-heartbeats",
            f"many workers: master CPU with {what} idle, heartbeats at 1 s",
            "% core",
            False,
            target=Target("<=", 10),
        ).add(SHARDMILL, [100 * s for s in idle]),
        Metric("many-rss", f"many workers: master peak RSS (VmHWM), {what}", "MiB", False).add(
            SHARDMILL, rss
        ),
    ]


def _wait_workers(client: object, n: int, fakes: list[multiprocessing.Process]) -> None:
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while len(client.workers()) < n:  # type: ignore[attr-defined]
        if time.monotonic() > deadline or not all(p.is_alive() for p in fakes):
            got = len(client.workers())  # type: ignore[attr-defined]
            raise RuntimeError(f"many workers: {got} of {n} simulated workers registered")
        time.sleep(0.1)  # polling the master's worker list until a deadline


def _start_fakes(address: str, keys: Path, n: int, stop: Event) -> list[multiprocessing.Process]:
    ctx = multiprocessing.get_context("spawn")  # no zmq context inherited from this process
    counts = [n // PROCESSES + (i < n % PROCESSES) for i in range(PROCESSES)]
    procs = [
        ctx.Process(target=_fake_process, args=(address, keys, i, count, stop), daemon=True)
        for i, count in enumerate(counts)
    ]
    for p in procs:
        p.start()
    return procs


def _fake_process(address: str, keys: Path, index: int, count: int, stop: Event) -> None:
    """`count` simulated workers in one process, each a socket of its own."""
    fakes = _Fakes(address, Path(keys), index, count)
    try:
        while not stop.is_set():
            fakes.step()
    finally:
        fakes.close()


class _Fakes:
    def __init__(self, address: str, keys: Path, index: int, count: int) -> None:
        self.zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.registry = Registry(["bench_tasks"], worker=f"fake-{index}")
        ready = Ready(
            slots=1, hostname="fake", pid=os.getpid(), version=__version__, modules=["bench_tasks"]
        )
        self.ready = encode(ready)
        self.poller = zmq.Poller()
        self.socks: list[zmq.Socket[bytes]] = []
        security = Security(keys=keys)
        for i in range(count):
            sock = self.zctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IDENTITY, f"fake-{index}-{i}".encode())
            security.client(sock, "worker")
            sock.connect(address)
            sock.send_multipart(self.ready)
            self.socks.append(sock)
            self.poller.register(sock, zmq.POLLIN)
        self.interval, self.next_beat = 1.0, 0.0

    def step(self) -> None:
        timeout = max(0, int((self.next_beat - time.monotonic()) * 1000)) + 1
        for sock, _ in self.poller.poll(timeout):
            self._drain(sock)
        now = time.monotonic()
        if now >= self.next_beat:
            self.next_beat = now + self.interval
            beat = encode(Heartbeat())
            for sock in self.socks:
                sock.send_multipart(beat)

    def _drain(self, sock: zmq.Socket[bytes]) -> None:
        """What the master sent (bundles too), answered as an agent does: the replies of one
        drain in one bundle, the newest ping echoed once."""
        echo = 0.0
        out: list[list[Any]] = []
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            for part in unbundle(frames):
                decoded = decode(part)
                msg = decoded.msg
                if isinstance(msg, Task):
                    reply, arrays = run_task(msg, decoded.arrays, self.registry)
                    out.append(encode(reply, arrays))
                elif isinstance(msg, MasterPing):
                    echo = max(echo, msg.sent)
                elif isinstance(msg, Welcome):
                    self.interval = msg.heartbeat_interval
                elif isinstance(msg, Reregister):
                    out.append(self.ready)
        if echo:
            out.append(encode(Heartbeat(echo=echo)))
        for frames in bundles(out, max_parts=256, max_bytes=2**20):
            sock.send_multipart(frames)

    def close(self) -> None:
        for sock in self.socks:
            sock.close(0)
        self.zctx.term()
