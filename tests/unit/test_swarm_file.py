"""docker/swarm.yaml as Docker's own stack loader reads it (`docker stack config`, no daemon
needed): every command parses with shardmill's CLI parser, keys land where each role reads
them, and what keeps a master's state safe (one replica, stop-first updates) stays put."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import parse_cli

from shardmill.wire.keyring import ADMINS
from shardmill.wire.security import FOLDER

ROOT = Path(__file__).parents[2]


def _render(*more: str, env_file: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """`docker stack config` of swarm.yaml and MORE, ENV_FILE sourced as docs/swarm.md says."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI: install Docker to check docker/swarm.yaml")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHARDMILL_")}
    files = [a for f in ("swarm.yaml", *more) for a in ("-c", str(ROOT / "docker" / f))]
    source = f'set -a; . "{env_file}"; set +a; ' if env_file else ""
    return subprocess.run(
        ["bash", "-c", f'{source}exec "$@"', "-", docker, "stack", "config", *files],
        capture_output=True, text=True, timeout=60, env=clean | env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    proc = _render(SHARDMILL_KEYS_DIR="/k")
    assert proc.returncode == 0, proc.stderr
    return dict(yaml.safe_load(proc.stdout))


def test_commands_parse_and_keys_land_where_each_role_reads_them(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert sorted(services) == ["master", "worker"]
    master, worker = (
        parse_cli(services["master"]["command"]),
        parse_cli(services["worker"]["command"]),
    )
    assert (master.keys, master.state_dir, master.port, master.client_port) == (
        "/keys", "/state", 5555, 5556,
    )  # fmt: skip
    assert (worker.keys, worker.master) == ("/keys", "tcp://master:5555")
    targets = {n: {s["target"] for s in svc["secrets"]} for n, svc in services.items()}
    for svc in services.values():  # Swarm mounts a secret at one path per service, silently
        sources = [s["source"] for s in svc["secrets"]]
        assert len(sources) == len(set(sources)), sources
    assert targets == {
        "master": {"/keys/master.key", "/keys/master.key_secret"}
        | {f"/keys/{FOLDER[r]}/{r}.key" for r in FOLDER}
        | {f"/keys/{ADMINS}/client.key"},
        "worker": {"/keys/master.key", "/keys/worker.key_secret"},
    }
    # secret keys readable by the image's user only; each secret made from keygen's file
    for svc in services.values():
        for s in svc["secrets"]:
            assert s["uid"] == "10001" and s["mode"] == (
                0o400 if "secret" in s["target"] else 0o444
            )
    assert {n: s["file"] for n, s in stack["secrets"].items()} == {
        "master_key": "/k/master.key",
        "master_key_secret": "/k/master.key_secret",
        "worker_key": "/k/worker.key",
        "worker_key_secret": "/k/worker.key_secret",
        "client_key": "/k/client.key",
        "admin_key": "/k/client.key",
    }


def test_one_master_on_its_state_and_workers_drain_before_the_kill(stack: dict[str, Any]) -> None:
    master, worker = stack["services"]["master"], stack["services"]["worker"]
    deploy = master["deploy"]
    assert deploy["replicas"] == 1 and deploy["update_config"]["order"] == "stop-first"
    assert deploy["endpoint_mode"] == "dnsrr" and "ports" not in master
    assert deploy["placement"]["constraints"] == ["node.role == manager"]
    assert {"type": "volume", "source": "state", "target": "/state"} in master["volumes"]
    grace = float(worker["stop_grace_period"].rstrip("s"))
    assert grace > float(worker["environment"]["SHARDMILL_WORKER_DRAIN_GRACE"])
    # no healthcheck test of their own: the image's `shardmill health` must pass for both
    assert all("test" not in s.get("healthcheck", {}) for s in (master, worker))
    # dnsrr resolves `master` once healthy: checked each second, a restart costs seconds
    assert master["healthcheck"]["interval"] == "1s"
    assert stack["networks"]["net"] == {"driver": "overlay", "attachable": True}
    # pipelines: workers serve map outputs to each other on a fixed port
    assert worker["environment"]["SHARDMILL_WORKER_SHUFFLE_PORT"] == "5557"


def test_the_env_file_and_the_dashboard_file_set_what_an_operator_changes(
    tmp_path: Path,
) -> None:
    env = tmp_path / "my.env"
    text = (ROOT / "docker" / "swarm.env").read_text()
    text = text.replace('SHARDMILL_WORKERS="2"', 'SHARDMILL_WORKERS="7"')
    env.write_text(text.replace("SHARDMILL_KEYS_DIR=\n", "SHARDMILL_KEYS_DIR=/k\n"))
    proc = _render("swarm.dashboard.yaml", env_file=str(env))
    assert proc.returncode == 0, proc.stderr
    stack = yaml.safe_load(proc.stdout)
    assert stack["services"]["worker"]["deploy"]["replicas"] == 7
    dash = stack["services"]["dashboard"]
    assert parse_cli(dash["command"]).port == 8787
    assert dash["ports"] == [{"mode": "host", "target": 8787, "published": 8787, "protocol": "tcp"}]
    assert {s["target"] for s in dash["secrets"]} == {
        "/keys/master.key", "/keys/client.key", "/keys/client.key_secret",
    }  # fmt: skip
    assert stack["secrets"]["client_key_secret"]["file"] == "/k/client.key_secret"
    # the env file as shipped leaves the key directory to the operator, and says so
    proc = _render(env_file=str(ROOT / "docker" / "swarm.env"))
    assert proc.returncode != 0 and "SHARDMILL_KEYS_DIR" in proc.stderr


def test_a_missing_key_directory_is_named() -> None:
    proc = _render()
    assert proc.returncode != 0 and "SHARDMILL_KEYS_DIR" in proc.stderr


def test_the_ha_file_adds_a_standby_and_etcd_that_only_the_masters_reach() -> None:
    proc = _render("swarm.ha.yaml", "swarm.dashboard.yaml", SHARDMILL_KEYS_DIR="/k")
    assert proc.returncode == 0, proc.stderr
    stack = yaml.safe_load(proc.stdout)
    services = stack["services"]
    a, b = (parse_cli(services[n]["command"]) for n in ("master", "master-b"))
    # each names the other as its peer, both the same etcd, each its own state volume
    assert (a.name, a.peer, b.name, b.peer) == (
        "master", "tcp://master-b:5557", "master-b", "tcp://master:5557",
    )  # fmt: skip
    assert a.etcd == b.etcd == "http://etcd:2379" and a.state_dir == b.state_dir == "/state"
    volumes = [
        {v["source"] for v in services[n]["volumes"] if v["target"] == "/state"}
        for n in ("master", "master-b")
    ]
    assert volumes == [{"state"}, {"state-b"}]
    # the standby is the master again: same keys, same one-at-a-time deploy, name resolution
    secrets = [sorted(services[n]["secrets"], key=str) for n in ("master", "master-b")]
    assert secrets[0] == secrets[1]
    for key in ("replicas", "endpoint_mode", "update_config"):
        assert services["master-b"]["deploy"][key] == services["master"]["deploy"][key]
    # workers follow whichever holds the lease; the dashboard can be told both
    worker = parse_cli(services["worker"]["command"])
    assert worker.master == "tcp://master:5555,tcp://master-b:5555"
    # etcd: the image's etcd, its own health check, on a network no client container joins
    etcd = services["etcd"]
    assert etcd["entrypoint"] == ["etcd"] and "test" in etcd["healthcheck"]
    assert set(etcd["networks"]) == {"election"}
    assert {n for n, s in services.items() if "election" in s["networks"]} == {
        "master", "master-b", "etcd",
    }  # fmt: skip
    assert "attachable" not in stack["networks"]["election"]
    proc = _render("swarm.dashboard.yaml", SHARDMILL_KEYS_DIR="/k", SHARDMILL_DASHBOARD_MASTER="x")
    assert (
        yaml.safe_load(proc.stdout)["services"]["dashboard"]["environment"]["SHARDMILL_MASTER"]
        == "x"
    )
