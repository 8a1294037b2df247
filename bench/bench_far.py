"""Workers far from the master: per-task W1 through a delaying TCP proxy, beside loopback.

The kernel here has no netem, so `../shared/tools/delayproxy.py` (or $SHARDMILL_DELAYPROXY)
stands between the workers and the master's worker port and delays every chunk by D ms each
way (RTT = 2D). 2 workers x 1 slot, no-op tasks with chunk_size=1: each slot would wait about
one round trip per task without a prefetch window sized to the round trip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench_context import Bench
from bench_harness import SHARDMILL, WORKERS, Metric, Target, new_cluster

from shardmill import LocalCluster

DELAYS_MS = (0.0, 1.0, 10.0)  # one way
# Of the loopback rate, what each delay must keep (issue: 80 % at 2 ms RTT, 50 % at 20 ms).
KEEP = {1.0: 0.8, 10.0: 0.5}
PROXY = Path(
    os.environ.get(
        "SHARDMILL_DELAYPROXY",
        Path(__file__).resolve().parents[2] / "shared" / "tools" / "delayproxy.py",
    )
)


def far_workers(b: Bench) -> list[Metric]:
    n = b.sizes.far_tasks
    rates: dict[float, list[float]] = {}
    windows: dict[float, list[int]] = {}
    for delay in DELAYS_MS:
        with _cluster(delay) as cluster, cluster.client() as client:
            expected = list(range(n))
            client.map("bench_tasks:noop1", [(i,) for i in range(200)], chunk_size=1).result()
            for _ in range(b.reps):
                b.settle()
                t0 = time.perf_counter()
                got = client.map("bench_tasks:noop1", [(i,) for i in expected], chunk_size=1)
                if got.result(timeout=600) != expected:
                    raise RuntimeError(f"far workers ({delay} ms): wrong results")
                rates.setdefault(delay, []).append(n / (time.perf_counter() - t0))
            windows[delay] = [w.window for w in client.workers()]
    metrics = []
    for delay in DELAYS_MS:
        target = None if delay == 0 else Target(">=", KEEP[delay], relative_to="far-0")
        what = "loopback" if delay == 0 else f"{delay:g} ms each way (RTT {2 * delay:g} ms)"
        m = Metric(
            f"far-{delay:g}",
            f"far workers: {n:,} no-op tasks, chunk_size=1, {WORKERS} x 1 slot, {what}",
            "tasks/s",
            True,
            target=target,
        ).add(SHARDMILL, rates[delay])
        m.extra[SHARDMILL] = {"windows": windows[delay]}
        if delay:
            m.note = f"{100 * KEEP[delay]:.0f} % of the loopback rate in the same run"
        metrics.append(m)
    return metrics


@contextmanager
def _cluster(delay_ms: float) -> Iterator[LocalCluster]:
    """A master whose 2 workers reach it through the delay proxy (directly when 0)."""
    cluster = new_cluster()
    cluster.n_workers = 0
    proxy = None
    with cluster:
        address = cluster.worker_address
        if delay_ms:
            port = _free_port()
            master_port = address.rsplit(":", 1)[1]
            cmd = [sys.executable, str(PROXY), str(port), master_port, str(delay_ms)]
            proxy = subprocess.Popen(cmd)
            _wait_listening(port)
            address = f"tcp://127.0.0.1:{port}"
        try:
            for _ in range(WORKERS):
                cluster.add_worker("--master", address)
            cluster.wait_for_workers(WORKERS)
            yield cluster
        finally:
            if proxy is not None:
                proxy.kill()
                proxy.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)  # poll until the proxy listens
    raise RuntimeError(f"delay proxy did not listen on {port}")
