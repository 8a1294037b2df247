"""docker/kubernetes renders with kustomize, validates against the Kubernetes schemas offline,
and every command line in it parses with shardmill's own CLI parser: the manifests cannot
drift from the CLI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helpers import parse_cli

from shardmill.wire.keyring import ADMINS
from shardmill.wire.security import FOLDER

BASE = Path(__file__).parents[2] / "docker" / "kubernetes"
KUBERNETES = kubernetes_validate.utils.latest_version()


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl: install it (with kustomize) to render docker/kubernetes")
    proc = subprocess.run(
        [kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def _pods(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objects
        if "template" in o.get("spec", {})
    }


def test_every_object_is_valid_kubernetes(objects: list[dict[str, Any]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == [
        ("Deployment", "shardmill-dashboard"),
        ("Deployment", "shardmill-worker"),
        ("PersistentVolumeClaim", "shardmill-data"),
        ("Service", "shardmill-dashboard"),
        ("Service", "shardmill-master"),
        ("StatefulSet", "shardmill-master"),
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)  # raises with the path


def test_every_command_line_parses_with_the_cli(objects: list[dict[str, Any]]) -> None:
    roles = {}
    for name, pod in _pods(objects).items():
        for c in pod["containers"]:
            args = parse_cli(c["args"])
            roles[name] = c["args"][0]
            probes = [
                c.get(p, {}).get("exec", {}).get("command")
                for p in ("readinessProbe", "livenessProbe")
            ]
            for command in filter(None, probes):
                assert command[0] == "shardmill"
                parse_cli(command[1:])
            env = {e["name"]: e["value"] for e in c.get("env", [])}
            assert env["SHARDMILL_KEYS"] == "/keys"
            if c["args"][0] == "worker":  # a drain is never cut short by the kubelet
                assert pod["terminationGracePeriodSeconds"] > float(
                    env["SHARDMILL_WORKER_DRAIN_GRACE"]
                )
                assert args.master == "tcp://shardmill-master:5555"
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert c["resources"]["requests"]
    assert roles == {
        "shardmill-master": "master",
        "shardmill-worker": "worker",
        "shardmill-dashboard": "dashboard",
    }


def test_keys_come_from_the_secret_as_each_role_reads_them(objects: list[dict[str, Any]]) -> None:
    """The master: its pair and its key folders (as `shardmill keygen` lays them out), no client
    secret (its probes read its health file); a worker or client: its pair and master.key."""
    want = {
        "shardmill-master": {"master.key", "master.key_secret"}
        | {f"{FOLDER[r]}/{r}.key" for r in FOLDER}
        | {f"{ADMINS}/client.key"},
        "shardmill-worker": {"master.key", "worker.key", "worker.key_secret"},
        "shardmill-dashboard": {"master.key", "client.key", "client.key_secret"},
    }
    for name, pod in _pods(objects).items():
        (keys,) = [v for v in pod["volumes"] if v["name"] == "keys"]
        assert keys["secret"]["secretName"] == "shardmill-keys"
        assert {i["path"] for i in keys["secret"]["items"]} == want[name]


def test_the_master_keeps_its_state_on_a_claim_and_services_match_ports(
    objects: list[dict[str, Any]],
) -> None:
    (master,) = [o for o in objects if o["kind"] == "StatefulSet"]
    assert master["spec"]["replicas"] == 1
    (claim,) = master["spec"]["volumeClaimTemplates"]
    (container,) = master["spec"]["template"]["spec"]["containers"]
    assert parse_cli(container["args"]).state_dir == "/state"
    assert {"name": "state", "mountPath": "/state"} in container["volumeMounts"]
    assert claim["metadata"]["name"] == "state"
    named = {p["name"] for p in container["ports"]}
    (service,) = [
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "shardmill-master"
    ]
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= named
