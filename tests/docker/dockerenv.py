"""The Docker side of tests/docker: build the image with the project's scripts, drive Compose.

The image is built by docker/install-compose.sh and docker/build-image.sh, so a fresh machine
needs nothing but a Docker daemon. Rebuilding an unchanged tree is a cache hit (the wheels are
byte-reproducible), and the package installed in the image is then compared file by file
with the working tree, so a test never runs yesterday's code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardmill import Client

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = [ROOT / "compose.yaml", Path(__file__).with_name("compose.test.yaml")]
IMAGE = os.environ.get("SHARDMILL_IMAGE", "shardmill:latest")
BUILD_LOG = ROOT / "docker" / "dist" / "build-image.log"
# A client's key pair and the master's public key: all a client outside Compose needs.
CLIENT_KEYS = ["client.key_secret", "master.key"]

# Prints {"shardmill/<module path>": sha256} for the package installed in the image.
IMAGE_FINGERPRINT = """
import hashlib, json, pathlib, shardmill
root = pathlib.Path(shardmill.__file__).parent
print(json.dumps({
    "shardmill/" + p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts
}))
"""


class BuildFailed(Exception):
    """A docker/ script exited non-zero; the message holds the end of its log."""


def run(cmd: list[str], *, timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    # stdin from /dev/null: `docker compose run` must not wait on (or grab) the caller's stdin.
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw
    )


def docker_daemon_error() -> str | None:
    """None when a Docker daemon answers; otherwise why not."""
    try:
        proc = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30)
    except FileNotFoundError:
        return "the docker CLI is not installed"
    return None if proc.returncode == 0 else proc.stderr.strip()[:300]


def run_script(name: str, *, timeout: float) -> None:
    """Run docker/NAME, appending its output to BUILD_LOG."""
    BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD_LOG, "a") as log:
        log.write(f"\n=== docker/{name} at {time.strftime('%F %T')}\n")
        log.flush()
        proc = subprocess.run(
            [str(ROOT / "docker" / name)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
    if proc.returncode != 0:
        tail = "\n".join(BUILD_LOG.read_text().splitlines()[-30:])
        raise BuildFailed(f"docker/{name} exited {proc.returncode}; end of {BUILD_LOG}:\n{tail}")


def source_fingerprint() -> dict[str, str]:
    """The .py files the wheel holds, read from the tree through pyproject's package layout."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs: dict[str, str] = setup.get("package-dir", {})

    def folder(package: str) -> Path:
        if package in dirs:
            return ROOT / dirs[package]
        parent, _, leaf = package.rpartition(".")
        return folder(parent) / leaf if parent else ROOT / leaf

    return {
        f"{package.replace('.', '/')}/{path.name}": hashlib.sha256(path.read_bytes()).hexdigest()
        for package in setup["packages"]
        for path in sorted(folder(package).glob("*.py"))
    }


def image_fingerprint() -> dict[str, str]:
    cmd = ["docker", "run", "--rm", "--entrypoint", "python", IMAGE, "-c", IMAGE_FINGERPRINT]
    proc = run(cmd, timeout=60)
    assert proc.returncode == 0, f"cannot read the package in {IMAGE}: {proc.stderr}"
    return dict(json.loads(proc.stdout))


def stale_files() -> list[str]:
    """Files whose content differs between the working tree and the image (or exist in one)."""
    want, have = source_fingerprint(), image_fingerprint()
    return sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))


def compose_env(worker_port: int, client_port: int, dashboard_port: int) -> dict[str, str]:
    """The caller's environment, minus anything that would steer Compose or shardmill."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "SHARDMILL_"))}
    env.update(
        SHARDMILL_IMAGE=IMAGE,
        SHARDMILL_PUBLISH_HOST="127.0.0.1",
        SHARDMILL_WORKER_PORT=str(worker_port),
        SHARDMILL_CLIENT_PORT=str(client_port),
        SHARDMILL_DASHBOARD_PORT=str(dashboard_port),
        SHARDMILL_SLOTS="2",
    )
    return env


@dataclass
class Compose:
    """One Compose project: `docker compose -p NAME -f compose.yaml -f compose.test.yaml`."""

    project: str
    env: dict[str, str]
    client_port: int
    keys: Path  # on the host: the client's key pair and master.key, copied from the volume

    @property
    def client_address(self) -> str:
        return f"tcp://127.0.0.1:{self.client_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.env['SHARDMILL_DASHBOARD_PORT']}"

    @property
    def command(self) -> list[str]:
        files = [a for f in COMPOSE_FILES for a in ("-f", str(f))]
        # No .env: one beside compose.yaml (docs/compose.md has `cp docker/ha.env .env`)
        # would steer the project past what `env` says.
        return ["docker", "compose", "-p", self.project, "--env-file", os.devnull, *files]

    def __call__(
        self, *args: str, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*self.command, *args]
        proc = run(cmd, timeout=timeout, env=self.env, cwd=ROOT)
        if check:
            assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
        return proc

    def client(self) -> Client:
        return Client(self.client_address, keys=self.keys)

    def copy_client_keys(self) -> None:
        """Copy what a host client needs out of the `keys` volume, as the README shows."""
        # The dashboard mounts the client's keys (the master holds no client secret)
        tar = [*self.command, "exec", "-T", "dashboard", "tar", "-C", "/keys", "-c", *CLIENT_KEYS]
        proc = subprocess.run(
            tar, capture_output=True, timeout=60, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL
        )
        assert proc.returncode == 0, proc.stderr.decode()
        self.keys.mkdir(mode=0o700)
        with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as archive:
            archive.extractall(self.keys, filter="data")
        assert sorted(p.name for p in self.keys.iterdir()) == sorted(CLIENT_KEYS)

    def container_of(self, hostname: str) -> str:
        """The worker container whose hostname (its short container id) is `hostname`."""
        ids = self("ps", "-q", "--all", "worker").stdout.split()
        found = [c for c in ids if c.startswith(hostname)]
        assert len(found) == 1, f"no single worker container with hostname {hostname}: {ids}"
        return found[0]

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks still labelled with this project."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind, cmd in {
            "containers": ["docker", "ps", "-aq", "--filter", label],
            "volumes": ["docker", "volume", "ls", "-q", "--filter", label],
            "networks": ["docker", "network", "ls", "-q", "--filter", label],
        }.items():
            proc = run(cmd, timeout=30)
            assert proc.returncode == 0, proc.stderr
            found[kind] = proc.stdout.split()
        return {k: v for k, v in found.items() if v}


@contextmanager
def running(c: Compose, *up: str) -> Iterator[Compose]:
    """The project `up -d UP...` with the client's keys copied out; after: what each container
    said last (shown when a test fails), `down -v` of every profile, and nothing left behind."""
    try:
        c("up", "-d", *up)
        c.copy_client_keys()
        yield c
    finally:
        try:
            logs = c("logs", "--no-color", "--tail", "80", check=False)
            print(f"--- docker compose logs ({c.project}) ---\n{logs.stdout}", file=sys.stderr)
        finally:
            down = c("--profile", "*", "down", "-v", "--remove-orphans", "-t", "5", check=False)
        left = c.leftovers()
        assert not left, f"project {c.project} left {left} behind: {down.stderr}"
