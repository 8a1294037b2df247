"""LocalCluster: a real master and real worker processes on 127.0.0.1, for demos and tests."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from shardmill.client import Client
from shardmill.errors import ShardmillError
from shardmill.wire.security import keygen


class ClusterStartError(ShardmillError):
    """Raised when a LocalCluster's master or workers do not come up in time."""


class LocalCluster:
    """Start a master and `workers` worker agents as subprocesses; stop them on exit."""

    def __init__(
        self,
        workers: int = 2,
        *,
        slots: int = 1,
        imports: Sequence[str] = (),
        heartbeat_interval: float = 1.0,
        heartbeat_liveness: int = 3,
        log_level: str = "WARNING",
        env: dict[str, str] | None = None,
        startup_timeout: float = 30.0,
        master_args: Sequence[str] = (),
        worker_args: Sequence[str] = (),
        state_dir: str | os.PathLike[str] | None = None,
        keys: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.n_workers = workers
        self.slots = slots
        self.imports = list(imports)
        self.heartbeat = (heartbeat_interval, heartbeat_liveness)
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.master_args = list(master_args)
        self.worker_args = list(worker_args)
        self.state_dir = None if state_dir is None else os.fspath(state_dir)
        self.insecure = insecure
        self._tmp_keys, self.keys_dir = _keys(keys, insecure)
        self.env = _env(env)
        # Each role's log in its own file (master.log, worker-N.log) instead of our stderr.
        self.log_dir = None if log_dir is None else Path(log_dir)
        self._logs: list[IO[bytes]] = []
        self.master: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.worker_address = ""
        self.client_address = ""
        self.metrics_url: str | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        """Start the master and the workers at once (on ports chosen here, so the workers need
        not wait for the master to announce them), then wait until every worker registered.
        A failed start stops whatever it started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        for tries_left in (1, 0):
            fresh = not self.worker_address
            if fresh:
                self.worker_address, self.client_address = _free_addresses(2)
            self._spawn_master()
            given = self.worker_address
            for _ in range(self.n_workers):
                self.add_worker()
            try:
                self._await_master()
                if self.worker_address != given:  # master_args chose the port: follow it
                    self._kill_workers()
                    for _ in range(self.n_workers):
                        self.add_worker()
                break
            except ClusterStartError:
                assert self.master is not None
                if not (fresh and tries_left and self.master.poll() is not None):
                    raise
                # The master exited: a port we chose was taken meanwhile. Again, on new ones.
                self._kill_workers()
                self.kill_master()
                self.worker_address = self.client_address = ""
        self.wait_for_workers(self.n_workers)

    def start_master(self) -> subprocess.Popen[bytes]:
        """Start the master; after a first start, on the same ports (and state dir)."""
        master = self._spawn_master()
        try:
            self._await_master()
        except ClusterStartError:
            self.stop()
            raise
        return master

    def _spawn_master(self) -> subprocess.Popen[bytes]:
        interval, liveness = self.heartbeat
        ports = [_port(self.worker_address), _port(self.client_address)]
        cmd = [
            sys.executable,
            "-m",
            "shardmill.master",
            "--host",
            "127.0.0.1",
            "--port",
            ports[0],
            "--client-port",
            ports[1],
            "--heartbeat-interval",
            str(interval),
            "--heartbeat-liveness",
            str(liveness),
            "--log-level",
            self.log_level,
            *self.master_args,
        ]
        if self.state_dir is not None:
            cmd += ["--state-dir", self.state_dir]
        cmd += self._security_args()
        self.master = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._log("master"), env=self.env
        )
        return self.master

    def _await_master(self) -> None:
        """Read the master's listening line: its addresses (and metrics URL)."""
        assert self.master is not None and self.master.stdout is not None
        line = _read_line(self.master.stdout, self.startup_timeout)
        try:
            ready = json.loads(line)
            self.worker_address, self.client_address = ready["workers"], ready["clients"]
            self.metrics_url = ready.get("metrics")  # with --metrics-port
        except (ValueError, KeyError) as e:
            raise ClusterStartError(f"master did not announce its ports (got {line!r})") from e

    def kill_master(self) -> None:
        """SIGKILL the master, as a crash would (tests and demos of recovery)."""
        if self.master is not None:
            self.master.kill()
            self.master.wait()
            if self.master.stdout is not None:
                self.master.stdout.close()

    def _kill_workers(self) -> None:
        for proc in self.workers:
            proc.kill()
            proc.wait()
        self.workers = []

    def add_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        """Start one more worker agent; it gets work as soon as it registers."""
        cmd = [
            sys.executable,
            "-m",
            "shardmill.worker",
            "--master",
            self.worker_address,
            "--slots",
            str(self.slots),
            "--log-level",
            self.log_level,
            "--heartbeat-interval",
            str(self.heartbeat[0]),
            *self.worker_args,
        ]
        for mod in self.imports:
            cmd += ["--import", mod]
        cmd += [*self._security_args(), *extra]  # the caller's flags win (argparse: last one)
        proc = subprocess.Popen(cmd, stderr=self._log(f"worker-{len(self.workers)}"), env=self.env)
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, n: int, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        with self.client() as client:
            while time.monotonic() < deadline:
                if len(client.workers()) >= n:
                    return
                time.sleep(0.01)  # poll-until-deadline
        raise ClusterStartError(f"fewer than {n} workers registered within the startup timeout")

    def _log(self, role: str) -> IO[bytes] | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._logs.append(open(self.log_dir / f"{role}.log", "ab"))  # noqa: SIM115 (closed in stop)
        return self._logs[-1]

    def _security_args(self) -> list[str]:
        return ["--keys", self.keys_dir] if self.keys_dir else ["--insecure"]

    def client(self, **kwargs: Any) -> Client:
        """A client of this cluster, with its keys."""
        kwargs.setdefault("keys", self.keys_dir)
        kwargs.setdefault("insecure", self.keys_dir is None)
        return Client(self.client_address, **kwargs)

    def client_env(self) -> dict[str, str]:
        """Environment for a `shardmill` CLI process talking to this cluster."""
        env = {"SHARDMILL_MASTER": self.client_address}
        if self.keys_dir:
            env["SHARDMILL_KEYS"] = self.keys_dir
        else:
            env["SHARDMILL_INSECURE"] = "1"
        return env

    def stop(self, timeout: float = 10.0) -> None:
        procs = [*self.workers, *([self.master] if self.master else [])]
        for proc in procs:  # workers first, so they can say DISCONNECT to a live master
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.master is not None and self.master.stdout is not None:
            self.master.stdout.close()
        for file in self._logs:
            file.close()
        self._logs = []
        if self._tmp_keys is not None:
            self._tmp_keys.cleanup()
            self._tmp_keys = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _keys(
    keys: str | os.PathLike[str] | None, insecure: bool
) -> tuple[tempfile.TemporaryDirectory[str] | None, str | None]:
    """Ephemeral CURVE keys (and the temporary dir holding them) unless given some, or told to
    run insecure."""
    if keys is not None or insecure:
        return None, None if keys is None else os.fspath(keys)
    tmp = tempfile.TemporaryDirectory(prefix="shardmill-keys-")
    keygen(Path(tmp.name))
    return tmp, tmp.name


def _env(env: dict[str, str] | None) -> dict[str, str]:
    """The roles' environment: workers import user modules by name, so they find modules next
    to the caller."""
    out = dict(os.environ if env is None else env)
    paths = [os.getcwd(), *filter(None, out.get("PYTHONPATH", "").split(os.pathsep))]
    out["PYTHONPATH"] = os.pathsep.join(paths)
    return out


def _free_addresses(n: int) -> list[str]:
    """`n` distinct loopback TCP addresses no one listens on now (the kernel's picks, held
    together so they differ, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [f"tcp://127.0.0.1:{s.getsockname()[1]}" for s in socks]


def _port(address: str) -> str:
    return address.rsplit(":", 1)[1] if address else "0"


def _read_line(stream: IO[bytes], timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise ClusterStartError(f"master did not start within {timeout} s")
        return stream.readline().decode()
    finally:
        sel.close()
