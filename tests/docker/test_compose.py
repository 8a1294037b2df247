"""The Compose deployment with real containers: shared volume, CLI, faults mid-job, and a
pipeline whose shuffle crosses containers, worker to worker.

The tests share one project (master + 3 workers with 2 slots each, heartbeats 0.2 s x 5)
from the `compose` fixture, which settles it before each test. Slow shards come from
`sm_tasks:nap`, mounted into the workers by tests/docker/compose.test.yaml.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from dockerenv import Compose, run
from faults import assert_merged_once
from helpers import wait_until

from shardmill import Client, Job, Pipeline
from shardmill.wire.protocol import ShardInfo

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

NAP = 1.0  # seconds per shard: long enough to act mid-job, short enough to keep tests quick

# Runs in a client container: writes the dataset into the shared volume, prints NumPy's answer.
GENERATE = """
import json, numpy as np
x = np.random.default_rng(2024).normal(loc=3.0, size=(200_000, 6))
np.save("/data/x.npy", x)
stats = {name: getattr(np, name)(x, axis=0).tolist() for name in ("mean", "std", "min", "max")}
print(json.dumps({**stats, "sum": x.sum(axis=0).tolist()}))
"""


@pytest.fixture
def client(compose: Compose) -> Iterator[Client]:
    with compose.client() as c:
        yield c


def _nap_job(client: Client, shards: int) -> Job:
    return client.map("sm_tasks:nap", [(i, NAP) for i in range(shards)], chunk_size=1)


def _leased(job: Job) -> int:
    return sum(s.state == "leased" for s in _shards(job))


def _shards(job: Job) -> list[ShardInfo]:
    return job.status(shards=True).shards or []


def _busy_worker(client: Client, job: Job) -> tuple[str, str]:
    """A worker that started a shard of `job` just now, after another shard finished.

    "Just now" (under 0.3 of a shard's time ago) leaves the fault time to land mid-shard.
    Returns (worker id, hostname); the hostname is the short id of its container.
    """

    def find() -> tuple[str, str] | None:
        if job.progress().shards_done < 1:
            return None
        now = time.time()  # attempts are stamped with the master's wall clock: same kernel
        fresh = {
            s.worker
            for s in _shards(job)
            if s.state == "leased" and s.history and now - s.history[-1].started < NAP * 0.3
        }
        return next(
            ((w.worker_id, w.hostname) for w in client.workers() if w.worker_id in fresh), None
        )

    return wait_until(find, timeout=60, what="a worker starting a shard of the job")


def _worker_ids(client: Client) -> set[str]:
    return {w.worker_id for w in client.workers()}


def _lost_on(job: Job, worker_id: str) -> set[int]:
    """Shards with an attempt on `worker_id` that the master gave up as lost. A cut-off worker
    runs on: when it rejoins, the result it sends closes that attempt as a duplicate."""
    return {
        s.index
        for s in _shards(job)
        if any(a.worker == worker_id and a.outcome in ("lost", "duplicate") for a in s.history)
    }


def _assert_rerun_elsewhere(job: Job, worker_id: str) -> None:
    """`worker_id` lost some shards mid-run, and each was merged from another worker."""
    shards = {s.index: s for s in _shards(job)}
    lost = _lost_on(job, worker_id)
    assert lost, f"no shard was lost with {worker_id}: the fault did not land mid-shard"
    for i in lost:
        ok = [a.worker for a in shards[i].history if a.outcome == "ok"]
        assert len(ok) == 1 and ok[0] != worker_id, f"shard {i}: {shards[i].history}"


def test_column_stats_over_the_shared_volume_and_the_cli(compose: Compose, client: Client) -> None:
    # Given a dataset written into the shared `data` volume by a client container
    # (--no-deps: the project is up; plain `run` would re-check keygen and the master first)
    gen = compose("run", "--rm", "--no-deps", "--entrypoint", "python", "client", "-c", GENERATE)
    want = {k: np.array(v) for k, v in json.loads(gen.stdout.strip().splitlines()[-1]).items()}
    # When the host submits column_stats on it through the published client port
    job = client.submit("column_stats", "/data/x.npy", shards=16)
    stats = job.result(timeout=60)
    # Then the workers read it from the volume and the merged statistics equal NumPy's
    assert stats["count"] == 200_000 and stats["shards_merged"] == 16
    for key in ("mean", "std", "min", "max", "sum"):
        np.testing.assert_allclose(stats[key], want[key], rtol=1e-9, atol=1e-9, err_msg=key)
    assert_merged_once(job)
    # And the example script, run in the client container as the README shows, agrees
    example = compose(
        "run", "--rm", "--no-deps", "--entrypoint", "python", "client",
        "/examples/submit_job.py", "/data/x.npy", "--shards", "8",
    )  # fmt: skip
    assert "rows: 200000, shards merged: 8" in example.stdout
    # When `shardmill workers` / `status` run on the host against the published port
    host_flags = ["--json", "--master", compose.client_address, "--keys", str(compose.keys)]
    on_host = {cmd: _host_cli(*cmd, *host_flags) for cmd in (("workers",), ("status", job.id))}
    # And inside the client container, which finds the master by its service name
    in_container = json.loads(
        compose("run", "--rm", "--no-deps", "client", "status", job.id, "--json").stdout
    )
    # Then both see the cluster and the job the Python client sees
    assert {w["worker_id"] for w in on_host[("workers",)]} == _worker_ids(client)
    for status in (on_host[("status", job.id)], in_container):
        assert status["state"] == "done" and status["shards_done"] == 16
    # And the dashboard service, published on the host's loopback, shows the job
    listed = wait_until(lambda: _dashboard(compose, "/api/jobs"), what="the dashboard")
    assert {j["job_id"]: j["state"] for j in json.loads(listed)}[job.id] == "done"
    assert "shardmill_shards_done_total" in _dashboard(compose, "/metrics")


def _dashboard(compose: Compose, path: str) -> str:
    try:
        with urllib.request.urlopen(compose.dashboard_url + path, timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:  # not listening yet (connection refused or reset)
        return ""


def _host_cli(*args: str) -> Any:
    cmd = [sys.executable, "-m", "shardmill", *args]
    proc = run(cmd, timeout=60)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
    return json.loads(proc.stdout)


def _docker(*args: str) -> None:
    proc = run(["docker", *args], timeout=60)
    assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"


def test_docker_kill_a_worker_mid_job(compose: Compose, client: Client) -> None:
    # Given a job of 24 one-second shards on 3 workers
    job = _nap_job(client, 24)
    victim, hostname = _busy_worker(client, job)
    # When the container of a worker that just started a shard is killed
    _docker("kill", compose.container_of(hostname))
    # Then the job still gives the right answer, each shard merged once
    assert job.result(timeout=120) == [i * 3 for i in range(24)]
    assert_merged_once(job)
    # And the shards it was running were re-run by other workers; it is gone from the list
    _assert_rerun_elsewhere(job, victim)
    assert victim not in _worker_ids(client)


def test_scale_up_mid_job(compose: Compose, client: Client) -> None:
    # Given a job of 40 one-second shards on 3 workers, its shards held at a gate (a file on
    # the shared volume) so that it still runs however long the scaling takes
    gate = f"/data/gate-{uuid.uuid4().hex[:8]}"
    job = client.map("sm_tasks:nap_after_flag", [(i, NAP, gate) for i in range(40)], chunk_size=1)
    before = _worker_ids(client)
    wait_until(lambda: _leased(job) >= 6, timeout=60, what="a shard in each slot")
    # When two more workers are started mid-job (--no-deps: the master is already up)
    compose("up", "-d", "--no-deps", "--no-recreate", "--scale", "worker=5", "worker")
    wait_until(lambda: len(client.workers()) == 5, timeout=30, what="5 workers")
    assert job.progress().state == "running"
    # And the gate opens
    compose("exec", "-T", "master", "touch", gate)
    # Then the job completes right, and the new workers took shards of it
    assert job.result(timeout=120) == [i * 3 for i in range(40)]
    assert_merged_once(job)
    new = {w.worker_id: w.shards_done for w in client.workers() if w.worker_id not in before}
    assert len(new) == 2 and all(done > 0 for done in new.values()), new
    merged_from = {a.worker for s in _shards(job) for a in s.history if a.outcome == "ok"}
    assert set(new) <= merged_from


def test_network_disconnect_a_worker_mid_job(compose: Compose, client: Client) -> None:
    # Given a job of 36 one-second shards on 3 workers
    job = _nap_job(client, 36)
    victim, hostname = _busy_worker(client, job)
    container = compose.container_of(hostname)
    network = f"{compose.project}_shardmill"
    # When the worker is cut off from the master's network mid-shard
    _docker("network", "disconnect", network, container)
    # Then the master expires it and re-runs the shards it was running on the others
    wait_until(lambda: victim not in _worker_ids(client), timeout=30, what="the worker to expire")
    lost = _lost_on(job, victim)
    assert lost, "the disconnect did not land mid-shard"
    wait_until(
        lambda: all(s.state == "done" for s in _shards(job) if s.index in lost),
        timeout=60,
        what="its shards to be re-run elsewhere",
    )
    assert job.progress().state == "running"
    # When it is reconnected while the job still runs
    _docker("network", "connect", network, container)
    # Then it rejoins, the job is right, and no shard was merged twice
    wait_until(lambda: victim in _worker_ids(client), timeout=30, what="the worker to rejoin")
    assert job.result(timeout=120) == [i * 3 for i in range(36)]
    assert_merged_once(job)
    _assert_rerun_elsewhere(job, victim)
    assert victim in _worker_ids(client)


def test_master_restart_mid_job(compose: Compose, client: Client) -> None:
    # Given a job of 30 one-second shards, partly done
    job = _nap_job(client, 30)
    wait_until(lambda: job.progress().shards_done >= 3, timeout=60, what="3 shards done")
    merged_before = {s.index for s in _shards(job) if s.state == "done"}
    # When the master container restarts (SIGTERM, then a fresh process on the same volumes)
    compose("restart", "-t", "5", "master")
    # Then the job resumes from its checkpoint and finishes right, each shard merged once
    assert job.result(timeout=120) == [i * 3 for i in range(30)]
    assert_merged_once(job)
    # And shards merged before the restart were not run again; the workers came back
    again = [s.index for s in _shards(job) if s.index in merged_before and s.attempts != 1]
    assert not again, f"merged before the restart, yet run again: {again}"
    wait_until(lambda: len(client.workers()) == 3, timeout=30, what="the workers to re-register")


def test_groupby_and_sort_shuffle_between_worker_containers(compose: Compose) -> None:
    # Given tables sent by value, and the three worker containers of the project
    rng = np.random.default_rng(21)
    table = {"user": rng.integers(0, 3000, 60_000), "amount": rng.integers(0, 100, 60_000)}
    parts = [{k: v[i::6] for k, v in table.items()} for i in range(6)]
    p = (
        Pipeline.from_tables(parts)
        .groupby("user", partitions=6)
        .agg(total=("amount", "sum"), n=("amount", "count"))
        .sort("total", descending=True)
        .collect()
    )
    # When it runs: each reduce shard fetches its partition from the containers that hold it
    with compose.client() as client:
        job = client.run(p)
        out = job.result(timeout=300)
        holders = set(job.progress()[0].holders)
        # and in 24 shards, with an edge budget of about two map outputs and with none: waves
        # absorbed early across containers (the first 6, one a slot, size the rest)
        small = [{k: v[i::24] for k, v in table.items()} for i in range(24)]
        q = Pipeline.from_tables(small).groupby("user", partitions=6).agg(n=("amount", "count"))
        waved = client.run(q.collect(), edge_budget=100_000)
        again = waved.result(timeout=300)
        waves = waved.progress()[0].waves
        plain = client.run(q.collect(), edge_budget=0).result(timeout=300)
    # Then the answer is NumPy's, and the map outputs lived in more than one container
    users, inv = np.unique(table["user"], return_inverse=True)
    total = np.bincount(inv, weights=table["amount"]).astype(np.int64)
    assert np.all(np.diff(out["total"]) <= 0)
    order = np.argsort(out["user"])
    assert np.array_equal(out["user"][order], users)
    assert np.array_equal(out["total"][order], total)
    assert len(holders) > 1 and not any("127.0.0.1" in h for h in holders), holders
    assert waves >= 1 and all(again[k].tobytes() == plain[k].tobytes() for k in plain)
