"""compose.yaml as Compose itself reads it (`docker compose config`, no daemon needed): alone,
and with docker/ha.env (the `ha` profile: etcd and master-b). Commands parse with shardmill's
CLI parser; etcd is reachable by the two masters only."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import parse_cli

ROOT = Path(__file__).parents[2]


def _config(*flags: str) -> dict[str, Any]:
    docker = shutil.which("docker")
    version = [docker or "docker", "compose", "version"]
    if docker is None or subprocess.run(version, capture_output=True).returncode != 0:
        pytest.skip("no docker compose: docker/install-compose.sh installs the plugin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHARDMILL_", "COMPOSE_"))}
    if "--env-file" not in flags:  # not a .env beside compose.yaml (docs/compose.md makes one)
        flags = ("--env-file", os.devnull, *flags)
    cmd = [docker, "compose", "-f", str(ROOT / "compose.yaml"), *flags, "config", "--format"]
    proc = subprocess.run([*cmd, "json"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return dict(yaml.safe_load(proc.stdout))


def _argv(service: dict[str, Any]) -> Any:
    return parse_cli(service["command"])


def test_alone_the_master_has_no_peer_and_everyone_one_address() -> None:
    services = _config()["services"]
    assert "etcd" not in services and "master-b" not in services
    master = _argv(services["master"])
    assert (master.peer, master.etcd, master.state_dir) == (None, None, "/state")
    assert _argv(services["worker"]).master == "tcp://master:5555"
    assert services["dashboard"]["environment"]["SHARDMILL_MASTER"] == "tcp://master:5556"


def test_the_ha_profile_pairs_the_masters_over_an_internal_etcd() -> None:
    # (with the client's profile too, which it is run under: a --profile replaces the env's)
    profiles = ["--profile", "ha", "--profile", "client"]
    config = _config("--env-file", str(ROOT / "docker" / "ha.env"), *profiles)
    services = config["services"]
    # Given the two masters: each the other's peer, both elected by the same etcd
    a, b = _argv(services["master"]), _argv(services["master-b"])
    assert (a.peer, b.peer) == ("tcp://master-b:5557", "tcp://master:5557")
    assert a.etcd == b.etcd == "http://etcd:2379" and a.name != b.name
    # each on a state volume of its own, with the same master keys
    volumes = {
        n: {v["target"]: v["source"] for v in services[n]["volumes"]}
        for n in ("master", "master-b")
    }
    assert volumes["master"]["/state"] != volumes["master-b"]["/state"]
    assert volumes["master"]["/keys"] == volumes["master-b"]["/keys"]
    # the master starts after etcd is healthy (so it is the first primary), master-b after it
    assert services["master"]["depends_on"]["etcd"]["condition"] == "service_healthy"
    assert services["master-b"]["depends_on"]["master"]["condition"] == "service_healthy"
    # Then workers, the dashboard and the client know both masters, the master first
    both = "tcp://master:{0},tcp://master-b:{0}"
    assert _argv(services["worker"]).master == both.format(5555)
    for name in ("dashboard", "client"):
        assert services[name]["environment"]["SHARDMILL_MASTER"] == both.format(5556)
    # And etcd is on the internal election network only, published nowhere
    etcd = services["etcd"]
    assert set(etcd["networks"]) == {"election"} and "ports" not in etcd
    assert config["networks"]["election"]["internal"] is True
    on_election = {n for n, s in services.items() if "election" in s.get("networks", {})}
    assert on_election == {"etcd", "master", "master-b"}
    assert etcd["entrypoint"] == ["etcd"] and etcd["volumes"][0]["source"] == "etcd"


def test_the_env_file_alone_turns_the_profile_on() -> None:
    services = _config("--env-file", str(ROOT / "docker" / "ha.env"))["services"]
    assert {"etcd", "master-b"} <= set(services)
    assert _argv(services["master"]).etcd == "http://etcd:2379"
