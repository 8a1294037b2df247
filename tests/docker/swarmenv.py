"""Docker Swarm for tests/docker/test_swarm.py: a single-node swarm left as found, one stack.

`swarm_node()` inits a swarm only when this node is in none and leaves it only if it did.
`Stack` deploys docker/swarm.yaml plus tests/docker/swarm.test.yaml as the README shows
(keys from `shardmill keygen` as secrets) and removes everything it made: services, secrets,
the network, the volumes. CLI commands run in one client container on the stack's network,
as a user outside the swarm would run them.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dockerenv import IMAGE, ROOT, run
from helpers import wait_until

STACK_FILES = [ROOT / "docker" / "swarm.yaml", Path(__file__).with_name("swarm.test.yaml")]


def docker(*args: str, timeout: float = 60.0, check: bool = True) -> str:
    proc = run(["docker", *args], timeout=timeout)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


@contextmanager
def swarm_node() -> Iterator[None]:
    """This node as a swarm manager; a swarm this made is left again afterwards."""
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()
    assert state in ("active", "inactive"), f"this node's swarm is {state!r}: fix it by hand"
    joined = state == "inactive"
    # `swarm init` also makes docker_gwbridge, which `swarm leave` keeps: remove it if we made it
    bridge = "docker_gwbridge" in docker("network", "ls", "--format", "{{.Name}}").split()
    if joined:  # loopback: the swarm talks to nobody else
        docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        yield
    finally:
        if joined:
            docker("swarm", "leave", "--force")
            if not bridge:
                docker("network", "rm", "docker_gwbridge")


@dataclass
class Stack:
    name: str
    keys: Path  # `shardmill keygen` output on the host
    client: str = field(default="", init=False)  # the client container's id

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDMILL_")}
        return env | {
            "SHARDMILL_IMAGE": IMAGE,
            "SHARDMILL_KEYS_DIR": str(self.keys),
            "SHARDMILL_WORKERS": "2",
            "SHARDMILL_TEST_SUPPORT": str(ROOT / "tests" / "support"),
        }

    def deploy(self) -> None:
        files = [a for f in STACK_FILES for a in ("-c", str(f))]
        cmd = ["docker", "stack", "deploy", *files, self.name]
        proc = run(cmd, timeout=120, env=self.env, cwd=ROOT)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
        # One long-lived client container on the stack's network: each CLI call is an exec.
        self.client = docker(
            "run", "-d", "--rm", "--network", f"{self.name}_net", "--user", str(os.getuid()),
            "-v", f"{self.keys}:/keys:ro", "-e", "SHARDMILL_KEYS=/keys",
            "-e", "SHARDMILL_MASTER=tcp://master:5556",
            "--entrypoint", "sleep", IMAGE, "infinity",
        ).strip()  # fmt: skip

    def cli(self, *args: str, timeout: float = 120.0) -> Any:
        """`shardmill ARGS --json` in the client container, parsed."""
        out = docker("exec", self.client, "shardmill", *args, "--json", timeout=timeout)
        return json.loads(out)

    def replicas(self, service: str) -> str:
        """'running/desired' tasks of a service (Swarm counts a task once it is healthy)."""
        return docker("service", "ls", "--filter", f"name={self.name}_{service}",
                      "--format", "{{.Replicas}}").strip()  # fmt: skip

    def containers(self, service: str) -> list[str]:
        label = f"label=com.docker.swarm.service.name={self.name}_{service}"
        return docker("ps", "-q", "--filter", label).split()

    def health(self, container: str) -> str:
        return docker("inspect", "--format", "{{.State.Health.Status}}", container).strip()

    def timeline(self, container: str, since: float) -> dict[str, float]:
        """Seconds from SINCE to the container's start and to its first passing health check."""
        state = json.loads(docker("inspect", "--format", "{{json .State}}", container))
        passed = [h["End"] for h in state["Health"]["Log"] if h["ExitCode"] == 0]
        times = {"started": state["StartedAt"]} | ({"healthy": passed[0]} if passed else {})
        return {k: round(_epoch(v) - since, 2) for k, v in times.items()}

    def logs(self) -> str:
        return "\n".join(
            f"--- {service} ---\n" + docker("service", "logs", "--tail", "60",
                                            f"{self.name}_{service}", check=False)
            for service in ("master", "worker")
        )  # fmt: skip

    def remove(self) -> dict[str, list[str]]:
        """Remove the stack, its client, volumes; what is still left (none, when all went)."""
        if self.client:
            docker("rm", "-f", self.client, check=False)
        docker("stack", "rm", self.name, check=False)
        label = f"label=com.docker.stack.namespace={self.name}"
        # The test is over: no drain to wait for (the network and volumes go once they do).
        tasks = docker("ps", "-aq", "--filter", label).split()
        if tasks:
            docker("rm", "-f", *tasks, check=False)

        def left() -> dict[str, list[str]]:
            found = {
                "containers": docker("ps", "-aq", "--filter", label).split(),
                "networks": docker("network", "ls", "-q", "--filter", label).split(),
                "secrets": docker("secret", "ls", "-q", "--filter", label).split(),
            }
            return {k: v for k, v in found.items() if v}

        wait_until(lambda: not left(), timeout=60, what=f"stack {self.name} to go")
        # Volumes outlive `stack rm` (they hold the master's state): the test removes its own.
        volumes = [f"{self.name}_state", f"{self.name}_data"]
        subprocess.run(["docker", "volume", "rm", *volumes], capture_output=True, timeout=60)
        named = docker("volume", "ls", "-q", "--filter", f"name={self.name}_").split()
        return left() | ({"volumes": named} if named else {})


def _epoch(stamp: str) -> float:
    """Docker's RFC 3339 time with nanoseconds, as seconds since the epoch."""
    day, _, frac = stamp.rstrip("Z").partition(".")
    frac = frac.split("+")[0].split("-")[0]
    whole = datetime.strptime(day, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return whole.timestamp() + float(f"0.{frac or 0}")
