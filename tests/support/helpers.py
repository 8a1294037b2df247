"""Test helpers: poll-until-deadline waits, the CLI as a real process, run counters."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shardmill import LocalCluster

SUPPORT = Path(__file__).parent
FAST: dict[str, Any] = {"heartbeat_interval": 0.05, "heartbeat_liveness": 10}

T = TypeVar("T")


def cluster_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), env.get("PYTHONPATH")]))
    return env


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports no one listens on now (held together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(pred: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `pred` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def run_cli(
    *args: str,
    master: str | LocalCluster | None = None,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m shardmill ARGS` as a real process (with a cluster's address and keys)."""
    full_env = dict(env or cluster_env())
    if isinstance(master, LocalCluster):
        full_env.update(master.client_env())
    elif master is not None:
        full_env["SHARDMILL_MASTER"] = master
        full_env["SHARDMILL_INSECURE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "shardmill", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def cli_json(*args: str, master: str | LocalCluster) -> Any:
    proc = run_cli(*args, "--json", master=master)
    assert proc.returncode == 0, f"shardmill {' '.join(args)} failed: {proc.stderr}"
    return json.loads(proc.stdout)


def runs(runs_dir: str, key: str) -> int:
    path = Path(runs_dir) / f"{key}.runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def parse_cli(argv: list[str]) -> Any:
    """`argv` parsed by shardmill's own CLI parser; a test failure naming what it refused."""
    from shardmill.cli.parser import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"shardmill {' '.join(argv)}: {err.getvalue().strip()}")
