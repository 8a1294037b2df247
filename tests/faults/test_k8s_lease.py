"""The Kubernetes Lease election (`--k8s-lease`): two real masters elect through a Lease, the
primary is killed, the standby takes the Lease over with a higher epoch and the job ends exact.

No Kubernetes API server can run on this machine (no cluster, no kube-apiserver, no container
runtime for kind), so these tests speak to tests/support/k8sapi.py: a STAND-IN for the API
server that serves the coordination.k8s.io/v1 Lease endpoints over HTTPS with their documented
semantics (404 then create, 409 on a stale resourceVersion, 401, 403 as RBAC words it). It
checks our side of the protocol, not the API server; docker/kubernetes is checked offline by
tests/unit/test_kubernetes.py.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import assert_merged_once
from helpers import wait_until
from k8sapi import LeaseApi
from standby import Master, Pair

from shardmill import Client
from shardmill.errors import ConfigError, ElectionError, SteppedDown
from shardmill.master.standby.kubeapi import KubeApi
from shardmill.master.standby.kubelease import SYNCED, LeaseElection

LEASE = "shardmill-master"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[LeaseApi]:
    server = LeaseApi(tmp_path / "api")
    try:
        yield server
    finally:
        server.stop()


def _holder(api: LeaseApi) -> tuple[str, int, str]:
    """The Lease's holder, epoch (leaseTransitions) and the standby it names in sync."""
    lease = api.lease(LEASE) or {"metadata": {}, "spec": {}}
    spec, notes = lease["spec"], lease["metadata"].get("annotations", {})
    return spec.get("holderIdentity", ""), spec.get("leaseTransitions", 0), notes.get(SYNCED, "")


def _run_job(pair: Pair, runs_dir: str, key: str) -> None:
    with Client(pair.clients_address(), insecure=True, connect_timeout=2) as c:
        job = c.map("sm_tasks:counted", [(runs_dir, f"{key}{i}", i) for i in range(6)])
        assert job.result(timeout=30) == [i + 1 for i in range(6)]
        assert_merged_once(job)


def _epoch(m: Master) -> int:
    line = wait_until(lambda: m.event("first_dispatch"), timeout=15, what=f"{m.name} to dispatch")
    return int(line["epoch"])


def test_the_standby_takes_the_lease_over_with_a_higher_epoch(
    tmp_path: Path, api: LeaseApi, runs_dir: str
) -> None:
    # Given two masters electing through a Lease that does not exist yet, and a worker
    pair = Pair(tmp_path, etcd=None, extra=["--k8s-lease", LEASE], env=api.env())
    worker = None
    try:
        old = pair.start(pair.masters[0])
        assert pair.primary() is old  # it found no Lease (404) and created it
        new = pair.start(pair.masters[1])
        wait_until(lambda: new.event("standby"), what="the standby to wait")
        worker = pair.worker(2)
        _run_job(pair, runs_dir, "before")
        wait_until(lambda: _holder(api) == (old.name, _epoch(old), new.name), what="in sync")
        # When the primary is killed
        pair.signal(old, signal.SIGKILL)
        # Then the standby takes the Lease over once it expires, with a higher epoch
        wait_until(lambda: new.event("listening"), timeout=15, what="the standby to take over")
        _run_job(pair, runs_dir, "after")
        assert _epoch(new) > _epoch(old)
        assert _holder(api)[:2] == (new.name, _epoch(new))
        assert not old.event("stepped_down") and not new.event("stepped_down")
    finally:
        if worker is not None:
            worker.kill()
            worker.wait()
        pair.stop()


def _elector(api: LeaseApi, name: str) -> LeaseElection:
    return LeaseElection(_client(api), lease=LEASE, name=name, ttl=2)


def _client(api: LeaseApi) -> KubeApi:
    env = api.env()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBERNETES_SERVICE_HOST", env["KUBERNETES_SERVICE_HOST"])
        mp.setenv("KUBERNETES_SERVICE_PORT", env["KUBERNETES_SERVICE_PORT"])
        return KubeApi(api.account)


def test_only_the_standby_in_sync_wins_and_the_old_primary_steps_down(api: LeaseApi) -> None:
    # Given a primary that won the Lease and named standby b in sync
    a, b, c = (_elector(api, n) for n in "abc")
    assert a.campaign(primary_epoch=0, replica_epoch=0) == 1
    a.set_synced("b")
    # While a renews, nobody wins; once it stops, c (not in sync) never does, b does
    assert b.campaign(primary_epoch=0, replica_epoch=1) is None
    epoch = wait_until(
        lambda: (
            c.campaign(primary_epoch=0, replica_epoch=0)
            or b.campaign(primary_epoch=0, replica_epoch=1)
        ),
        timeout=10,
        what="b to win",
    )
    assert (epoch, _holder(api)) == (2, ("b", 2, ""))
    # And a, renewing late, finds it was replaced
    with pytest.raises(SteppedDown, match="held by b for epoch 2"):
        a.check(float("inf"))


def test_a_primary_that_stops_cleanly_hands_the_lease_over_at_once(api: LeaseApi) -> None:
    # Given a primary with standby b in sync, and b waiting on the Lease
    a, b = _elector(api, "a"), _elector(api, "b")
    assert a.campaign(primary_epoch=0, replica_epoch=0) == 1
    a.set_synced("b")
    assert b.campaign(primary_epoch=0, replica_epoch=1) is None
    # When a stops cleanly (SIGTERM: a rolling update, a node drain)
    a.resign()
    # Then b wins at its next read, without waiting out the lease's 2 s
    b.next_read = 0.0
    assert b.campaign(primary_epoch=0, replica_epoch=1) == 2
    assert _holder(api) == ("b", 2, "")


def test_of_two_writes_on_one_version_only_one_succeeds(api: LeaseApi) -> None:
    # Given a Lease both masters have read
    a, b = _elector(api, "a"), _elector(api, "b")
    assert a.campaign(primary_epoch=0, replica_epoch=0) == 1
    seen = api.lease(LEASE)
    assert seen is not None
    a.check(float("inf"))  # a renews: a new resourceVersion
    # When b writes on the version it read, then the API server answers 409
    seen["spec"]["holderIdentity"] = "b"
    with pytest.raises(ElectionError, match="409 Conflict"):
        b.api.replace(seen)
    assert _holder(api)[0] == "a" and api.conflicts == 1


def test_a_missing_role_and_a_missing_token_say_what_to_add(api: LeaseApi, tmp_path: Path) -> None:
    # A 403 from RBAC names the Role the master's ServiceAccount lacks
    api.forbid = {"get"}
    with pytest.raises(ElectionError, match="needs the Role shardmill-master-lease"):
        _elector(api, "a").campaign(primary_epoch=0, replica_epoch=0)
    # No service-account token mounted: the pod needs automountServiceAccountToken
    with pytest.raises(ConfigError, match="automountServiceAccountToken: true"):
        KubeApi(tmp_path / "nothing")
