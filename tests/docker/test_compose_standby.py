"""compose.yaml's `ha` profile with real containers: etcd, a master and its standby master-b.

`docker kill` (SIGKILL) of the primary mid-job: master-b wins etcd's lease and serves, the
workers follow it (they were given both addresses), and the job ends exact, no shard merged
twice. A project of its own (`smha-...`), torn down with its volumes after.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from dockerenv import Compose, compose_env, running
from faults import assert_merged_once
from helpers import free_ports, wait_until

from shardmill import Client, MasterUnreachable

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

SHARDS, NAP = 24, 0.5  # 2 workers x 2 slots: about 3 s of shards, half of them after the kill
TAKEOVER = 10.0  # seconds from the kill to master-b answering (a 2 s lease, on a busy host)


@pytest.fixture(scope="module")
def ha(docker_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    """The `ha` profile as docker/ha.env sets it, with 2 workers, on ports of its own."""
    worker, client, dashboard, standby_worker, standby_client = free_ports(5)
    env = compose_env(worker, client, dashboard)
    env.update(
        COMPOSE_PROFILES="ha",
        SHARDMILL_HA="1",
        SHARDMILL_STANDBY_WORKER_PORT=str(standby_worker),
        SHARDMILL_STANDBY_CLIENT_PORT=str(standby_client),
    )
    name = f"smha-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    c = Compose(name, env, client, tmp_path_factory.mktemp("compose-ha") / "keys")
    with running(c, "--scale", "worker=2"):
        yield c


def _masters(ha: Compose) -> str:
    """Both masters' published client ports, as a host client names them."""
    return f"{ha.client_address},tcp://127.0.0.1:{ha.env['SHARDMILL_STANDBY_CLIENT_PORT']}"


def _standby_state(client: Client) -> str:
    try:
        return client.ping(timeout=1).standby
    except MasterUnreachable:
        return ""


def _alone(client: Client) -> str:
    """The standby state of a master that answers with none in sync ("alone: WHY"), or ""."""
    state = _standby_state(client)
    return state if state.startswith("alone") else ""


def _dashboard_says(ha: Compose) -> str:
    """The standby state the dashboard container's cluster API reports ("" when it cannot)."""
    try:
        with urllib.request.urlopen(f"{ha.dashboard_url}/api/cluster", timeout=5) as resp:
            return str(json.loads(resp.read())["standby"])
    except OSError:  # not listening yet, or its master is not answering (a 503)
        return ""


def test_the_standby_takes_over_from_a_killed_primary(ha: Compose) -> None:
    with Client(_masters(ha), keys=ha.keys, connect_timeout=2) as client:
        # Given the master primary, master-b in sync, and both workers registered
        wait_until(
            lambda: _standby_state(client) == "in sync: master-b", timeout=60, what="in sync"
        )
        wait_until(lambda: len(client.workers()) == 2, timeout=60, what="2 workers")
        # And the dashboard container shows it
        wait_until(lambda: _dashboard_says(ha) == "in sync: master-b", what="the dashboard")
        # When the primary's container is killed mid-job
        job = client.map("sm_tasks:nap", [(i, NAP) for i in range(SHARDS)], chunk_size=1)
        wait_until(lambda: job.progress().shards_done >= 6, what="6 shards merged")
        done, killed = job.progress().shards_done, time.monotonic()
        ha("kill", "-s", "SIGKILL", "master")
        # Then master-b answers within seconds, as primary on its own (its peer is gone)
        state = wait_until(lambda: _alone(client), timeout=TAKEOVER, what="master-b to answer")
        serves = time.monotonic() - killed
        # And the workers bring it shards: the job goes on and ends exact, each merged once
        wait_until(lambda: job.progress().shards_done > done, timeout=30, what="a merge")
        merges = time.monotonic() - killed
        assert job.result(timeout=60) == [3 * i for i in range(SHARDS)]
        assert_merged_once(job)
        # And the dashboard, given both addresses too, follows it and shows it alone
        wait_until(lambda: _dashboard_says(ha).startswith("alone"), what="the dashboard")
        # When the old primary is started again, it comes back as master-b's standby
        ha("up", "-d", "--no-deps", "master")
        wait_until(
            lambda: _standby_state(client) == "in sync: master", timeout=60, what="master back"
        )
        print(f"takeover: master-b answers {serves:.1f} s after the kill ({state!r}), "
              f"first merge after {merges:.1f} s")  # fmt: skip
