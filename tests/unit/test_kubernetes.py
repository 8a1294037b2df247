"""docker/kubernetes and the overlays in examples/kubernetes render with kustomize and validate
offline (built-in kinds against the Kubernetes schemas, KEDA's and Prometheus Operator's kinds
against tests/support/crds.py), every command line parses with shardmill's own CLI parser (the
manifests cannot drift from the CLI), and the hardening the base promises is there."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import crds
import kubernetes_validate
import pytest
import yaml
from helpers import parse_cli

from shardmill.master.standby.serve import the_other
from shardmill.wire.keyring import ADMINS
from shardmill.wire.security import FOLDER, keygen

ROOT = Path(__file__).parents[2]
KUBERNETES = kubernetes_validate.utils.latest_version()
OVERLAYS = ("small", "many-workers")
Objects = list[dict[str, Any]]
MASTERS = [f"shardmill-master-{i}" for i in (0, 1)]  # the StatefulSet's pods


def both(port: int) -> str:
    """Both masters' addresses, by their pods' names under the headless Service."""
    return ",".join(f"tcp://{pod}.shardmill-master:{port}" for pod in MASTERS)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base and the overlays copied side by side, each overlay with keys of its own."""
    if shutil.which("kubectl") is None:
        pytest.skip("no kubectl: install it (with kustomize) to render docker/kubernetes")
    root = tmp_path_factory.mktemp("k8s")
    for part in ("docker/kubernetes", "examples/kubernetes"):
        shutil.copytree(ROOT / part, root / part, ignore=shutil.ignore_patterns("keys"))
    for overlay in OVERLAYS:
        keygen(root / "examples/kubernetes" / overlay / "keys", force=False)
    return root


def render(path: Path) -> Objects:
    proc = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def base(tree: Path) -> Objects:
    return render(tree / "docker/kubernetes")


@pytest.fixture(scope="module")
def overlays(tree: Path) -> dict[str, Objects]:
    return {o: render(tree / "examples/kubernetes" / o) for o in OVERLAYS}


def validate(objects: Objects) -> None:
    for obj in objects:
        if obj["kind"] in crds.SCHEMAS:
            crds.validate(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)  # raises with the path


def one(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pods(objects: Objects) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objects
        if "template" in o.get("spec", {})
    }


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_every_object_is_valid_kubernetes(base: Objects, overlays: dict[str, Objects]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in base)
    assert kinds == [
        ("Deployment", "shardmill-dashboard"),
        ("Deployment", "shardmill-worker"),
        ("Lease", "shardmill-master"),
        ("NetworkPolicy", "shardmill-dashboard"),
        ("NetworkPolicy", "shardmill-master"),
        ("NetworkPolicy", "shardmill-worker"),
        ("PodDisruptionBudget", "shardmill-master"),
        ("PodDisruptionBudget", "shardmill-worker"),
        ("Role", "shardmill-master-lease"),
        ("RoleBinding", "shardmill-master-lease"),
        ("Service", "shardmill-dashboard"),
        ("Service", "shardmill-master"),
        ("ServiceAccount", "shardmill-master"),
        ("StatefulSet", "shardmill-master"),
    ]
    validate(base)
    for objects in overlays.values():
        validate(objects)


def test_every_command_line_parses_with_the_cli(base: Objects) -> None:
    roles = {}
    for name, pod in pods(base).items():
        for c in pod["containers"]:
            args = parse_cli(c["args"])
            roles[name] = c["args"][0]
            probes = [
                c.get(p, {}).get("exec", {}).get("command")
                for p in ("startupProbe", "readinessProbe", "livenessProbe")
            ]
            for command in filter(None, probes):
                assert command[0] == "shardmill"
                parse_cli(command[1:])
            env = env_of(c)
            assert env["SHARDMILL_KEYS"] == "/keys"
            if c["args"][0] == "worker":  # a drain is never cut short by the kubelet
                assert pod["terminationGracePeriodSeconds"] > float(
                    env["SHARDMILL_WORKER_DRAIN_GRACE"]
                )
                assert args.master == both(5555)
            if c["args"][0] == "dashboard":
                assert args.master == both(5556)
            assert c["resources"]["requests"]
    assert roles == {
        "shardmill-master": "master",
        "shardmill-worker": "worker",
        "shardmill-dashboard": "dashboard",
    }


def test_every_pod_is_hardened_and_every_probe_has_a_timeout(base: Objects) -> None:
    for name, pod in pods(base).items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        # a token only where the Kubernetes API is spoken to: the masters' election
        is_master = name == "shardmill-master"
        assert pod["automountServiceAccountToken"] is is_master, name
        assert pod.get("serviceAccountName") == ("shardmill-master" if is_master else None)
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c:  # an exec probe starts Python: 0.3 s idle, more under load
                    assert c[probe]["timeoutSeconds"] >= 3, (name, probe)
    # the master: a long resume is covered by its startup probe, not killed by liveness
    (master,) = pods(base)["shardmill-master"]["containers"]
    startup = master["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert "initialDelaySeconds" not in master["livenessProbe"]


def test_the_master_is_two_replicas_behind_a_headless_service(base: Objects) -> None:
    master = one(base, "StatefulSet", "shardmill-master")
    assert master["spec"]["replicas"] == 2
    assert master["spec"]["podManagementPolicy"] == "Parallel"  # a standby waits for either
    (claim,) = master["spec"]["volumeClaimTemplates"]  # a state claim for each replica
    (container,) = master["spec"]["template"]["spec"]["containers"]
    assert parse_cli(container["args"]).state_dir == "/state"
    assert {"name": "state", "mountPath": "/state"} in container["volumeMounts"]
    assert claim["metadata"]["name"] == "state"
    service = one(base, "Service", "shardmill-master")
    assert service["spec"]["clusterIP"] == "None"  # each pod has a name of its own
    assert service["spec"]["publishNotReadyAddresses"] is True  # a standby not in sync yet
    assert master["spec"]["serviceName"] == "shardmill-master"
    named = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= named
    assert {"name": "replication", "containerPort": 5557} in container["ports"]
    # a drain stops one master at a time, only while the other is ready
    pdb = one(base, "PodDisruptionBudget", "shardmill-master")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "shardmill-master"}


def test_the_masters_elect_through_a_lease_only_they_may_touch(base: Objects) -> None:
    spec = pods(base)["shardmill-master"]
    (container,) = spec["containers"]
    args = parse_cli(container["args"])
    # each master names the other by its pod's name (its host name), elected by the Lease
    assert args.peer == both(5557)
    for me, other in (MASTERS, MASTERS[::-1]):
        assert the_other(args.peer, me) == f"tcp://{other}.shardmill-master:5557"
    assert env_of(container)["SHARDMILL_MASTER_NAME"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    assert args.k8s_lease == "shardmill-master" and int(args.lease_ttl) >= 2
    lease = one(base, "Lease", args.k8s_lease)
    assert "spec" not in lease  # the masters write it; `kubectl apply` leaves it to them
    # the Role: get and update on that one Lease, create (RBAC cannot narrow it by name)
    role = one(base, "Role", "shardmill-master-lease")
    leases = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"]}
    assert role["rules"] == [
        {**leases, "resourceNames": [args.k8s_lease], "verbs": ["get", "update"]},
        {**leases, "verbs": ["create"]},
    ]
    binding = one(base, "RoleBinding", "shardmill-master-lease")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "shardmill-master-lease"
    }  # fmt: skip
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": spec["serviceAccountName"]}]
    account = one(base, "ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False  # only the master pod asks for it


def test_workers_take_slots_from_their_cpu_request_and_survive_a_master_outage(
    base: Objects,
) -> None:
    (worker,) = pods(base)["shardmill-worker"]["containers"]
    assert "--slots" not in worker["args"]
    env = env_of(worker)
    assert env["SHARDMILL_WORKER_SLOTS"]["resourceFieldRef"] == {
        "containerName": "worker", "resource": "requests.cpu", "divisor": "1"
    }  # fmt: skip
    # ready: hears the master; alive: its loop turns (a master outage restarts no worker)
    ready = parse_cli(worker["readinessProbe"]["exec"]["command"][1:])
    live = parse_cli(worker["livenessProbe"]["exec"]["command"][1:])
    assert ready.file == env["SHARDMILL_WORKER_HEALTH_FILE"]
    assert live.file == env["SHARDMILL_WORKER_ALIVE_FILE"] != ready.file
    # pipelines: workers serve map outputs to each other
    assert env["SHARDMILL_WORKER_SHUFFLE_PORT"] == "5557"
    assert {"name": "shuffle", "containerPort": 5557} in worker["ports"]
    pdb = one(base, "PodDisruptionBudget", "shardmill-worker")
    assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "shardmill-worker"}


def _ingress(base: Objects, name: str) -> dict[int, list[dict[str, Any]]]:
    """Port -> the peers a NetworkPolicy lets in on it."""
    policy = one(base, "NetworkPolicy", name)
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}
    return {p["port"]: rule["from"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}


def test_network_policies_let_in_only_who_needs_each_port(base: Objects) -> None:
    def pod(name: str) -> dict[str, Any]:
        return {"podSelector": {"matchLabels": {"app.kubernetes.io/name": name}}}

    client = {"podSelector": {"matchLabels": {"shardmill.io/client": "true"}}}
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    assert _ingress(base, "shardmill-master") == {
        5555: [pod("shardmill-worker")],
        5556: [pod("shardmill-dashboard"), client],
        9100: [monitoring],  # metrics have no authentication
        5557: [pod("shardmill-master")],  # the standby's replication port
    }
    assert _ingress(base, "shardmill-worker") == {5557: [pod("shardmill-worker")]}
    assert list(_ingress(base, "shardmill-dashboard")) == [8787]
    # every port a pod listens on is covered by its policy, nothing else is open
    for name, spec in pods(base).items():
        ports = {p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
        assert ports == set(_ingress(base, name)), name


def test_keys_come_from_the_secret_as_each_role_reads_them(base: Objects) -> None:
    """The master: its pair and its key folders (as `shardmill keygen` lays them out), no client
    secret (its probes read its health file); a worker or client: its pair and master.key."""
    want = {
        "shardmill-master": {"master.key", "master.key_secret"}
        | {f"{FOLDER[r]}/{r}.key" for r in FOLDER}
        | {f"{ADMINS}/client.key"},
        "shardmill-worker": {"master.key", "worker.key", "worker.key_secret"},
        "shardmill-dashboard": {"master.key", "client.key", "client.key_secret"},
    }
    for name, pod in pods(base).items():
        (keys,) = [v for v in pod["volumes"] if v["name"] == "keys"]
        assert keys["secret"]["secretName"] == "shardmill-keys"
        assert {i["path"] for i in keys["secret"]["items"]} == want[name]


def _secret_names(objects: Objects) -> set[str]:
    return {
        v["secret"]["secretName"]
        for pod in pods(objects).values()
        for v in pod["volumes"]
        if v["name"] == "keys"
    }


def test_overlay_keys_come_from_a_generator_and_a_key_change_rolls_the_pods(
    tree: Path, overlays: dict[str, Objects]
) -> None:
    for objects in overlays.values():
        (secret,) = [o for o in objects if o["kind"] == "Secret"]
        assert secret["metadata"]["name"].startswith("shardmill-keys-")  # a hash of the keys
        assert _secret_names(objects) == {secret["metadata"]["name"]}
        assert set(secret["data"]) >= {"master.key", "worker.key_secret", "client.key_secret"}
    # When the keys are made anew, every pod references a Secret of another name
    keys = tree / "examples/kubernetes/small/keys"
    shutil.rmtree(keys)
    keygen(keys, force=False)
    again = render(tree / "examples/kubernetes/small")
    assert _secret_names(again).isdisjoint(_secret_names(overlays["small"]))


def test_the_data_claim_is_optional(base: Objects, overlays: dict[str, Objects]) -> None:
    def data(objects: Objects, name: str) -> dict[str, Any]:
        (volume,) = [v for v in pods(objects)[name]["volumes"] if v["name"] == "data"]
        return dict(volume)

    # the base and the small overlay need no RWX storage class (URL datasets)
    for objects in (base, overlays["small"]):
        assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
        assert data(objects, "shardmill-worker") == {"name": "data", "emptyDir": {}}
    many = overlays["many-workers"]
    claim = one(many, "PersistentVolumeClaim", "shardmill-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("shardmill-master", "shardmill-worker"):
        assert data(many, name) == {
            "name": "data",
            "persistentVolumeClaim": {"claimName": "shardmill-data"},
        }


def test_autoscaling_follows_the_queue(tree: Path, overlays: dict[str, Objects]) -> None:
    # KEDA (many-workers overlay) and a plain HPA (its component through a test overlay)
    many = overlays["many-workers"]
    scaled = one(many, "ScaledObject", "shardmill-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "shardmill-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert (
        trigger["type"] == "prometheus"
        and "shardmill_queued_shards" in trigger["metadata"]["query"]
    )
    monitor = one(many, "ServiceMonitor", "shardmill-master")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    with_hpa = tree / "hpa-overlay"
    with_hpa.mkdir()
    (with_hpa / "kustomization.yaml").write_text(
        "resources: [../docker/kubernetes]\ncomponents: [../docker/kubernetes/components/hpa]\n"
    )
    objects = render(with_hpa)
    validate(objects)
    hpa = one(objects, "HorizontalPodAutoscaler", "shardmill-worker")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "shardmill-worker"
    }  # fmt: skip
    # scale-down drains: at most a few workers a minute, each inside its termination grace
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
