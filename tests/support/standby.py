"""A real etcd on 127.0.0.1 and a pair of masters (primary and standby) as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from helpers import cluster_env, free_ports, wait_until
from sysprog import ensure


class Etcd:
    """Debian's etcd on loopback ports, its data in `data_dir`; stopped by `stop`."""

    def __init__(self, data_dir: Path) -> None:
        (binary,) = ensure(["etcd"], ["etcd-server"])
        client, peer = free_ports(2)
        self.url = f"http://127.0.0.1:{client}"
        self.proc = subprocess.Popen(
            [
                binary,
                "--data-dir",
                str(data_dir),
                "--listen-client-urls",
                self.url,
                "--advertise-client-urls",
                self.url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{peer}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=30, what="etcd to answer")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class Master:
    """One master process of the pair, and the JSON lines it printed (with when they came)."""

    name: str
    ports: dict[str, int]
    state_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    lines: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    reader: threading.Thread | None = None

    def event(self, kind: str) -> dict[str, Any] | None:
        return next((line for _, line in self.lines if line.get("event") == kind), None)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Pair:
    """Two masters, each the other's peer, both with `etcd` (or none: promote by hand, or an
    arbiter named in `extra`, its environment in `env`)."""

    def __init__(
        self,
        base: Path,
        *,
        etcd: str | None,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        names = ("a", "b")
        ports = free_ports(6)
        self.masters = [
            Master(
                n, dict(zip(("port", "client", "replica"), ports[3 * i :], strict=False)), base / n
            )
            for i, n in enumerate(names)
        ]
        self.etcd = etcd
        self.extra = list(extra)
        self.env = {**cluster_env(), **(env or {})}

    def workers_address(self) -> str:
        return ",".join(f"tcp://127.0.0.1:{m.ports['port']}" for m in self.masters)

    def clients_address(self) -> str:
        return ",".join(f"tcp://127.0.0.1:{m.ports['client']}" for m in self.masters)

    def worker(self, slots: int) -> subprocess.Popen[bytes]:
        """A worker given both masters' addresses, quick to notice a silent one."""
        cmd = [sys.executable, "-m", "shardmill.worker", "--insecure", "--slots", str(slots)]
        cmd += ["--master", self.workers_address(), "--import", "sm_tasks"]
        cmd += ["--heartbeat-interval", "0.05"]
        env = {**cluster_env(), "SHARDMILL_WORKER_RECONNECT_MAX": "0.2"}
        return subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)

    def start(self, m: Master, *flags: str) -> Master:
        other = next(o for o in self.masters if o is not m)
        cmd = [sys.executable, "-m", "shardmill.master", "--insecure", "--name", m.name]
        cmd += ["--port", str(m.ports["port"]), "--client-port", str(m.ports["client"])]
        cmd += ["--replica-port", str(m.ports["replica"]), "--state-dir", str(m.state_dir)]
        cmd += ["--peer", f"tcp://127.0.0.1:{other.ports['replica']}", "--log-level", "INFO"]
        cmd += ["--heartbeat-interval", "0.05", "--heartbeat-liveness", "10", "--import"]
        cmd += ["sm_tasks", *(["--etcd", self.etcd] if self.etcd else []), *self.extra, *flags]
        self.close(m)
        m.lines = []
        log = open(m.state_dir.parent / f"master-{m.name}.log", "ab")  # noqa: SIM115
        m.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=self.env)
        log.close()
        m.reader = threading.Thread(target=_read_lines, args=(m.proc.stdout, m.lines), daemon=True)
        m.reader.start()
        return m

    def primary(self, timeout: float = 30.0) -> Master:
        """The master that announced it serves (and still runs)."""
        return wait_until(
            lambda: next((m for m in self.masters if m.alive() and m.event("listening")), None),
            timeout=timeout,
            what="a primary",
        )

    def standby_of(self, primary: Master) -> Master:
        return next(m for m in self.masters if m is not primary)

    def signal(self, m: Master, sig: signal.Signals) -> float:
        """Send `sig`; when it was sent (time.time())."""
        assert m.proc is not None
        at = time.time()
        os.kill(m.proc.pid, sig)
        return at

    def stop(self) -> None:
        for m in self.masters:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.kill()
            self.close(m)

    def close(self, m: Master) -> None:
        """Wait for a master's process to end, and close its output."""
        if m.proc is None:
            return
        m.proc.wait()
        if m.reader is not None:
            m.reader.join(timeout=10)
        if m.proc.stdout is not None:
            m.proc.stdout.close()


def _read_lines(stream: IO[bytes], into: list[tuple[float, dict[str, Any]]]) -> None:
    for raw in stream:
        try:
            into.append((time.time(), json.loads(raw)))
        except ValueError:
            continue
