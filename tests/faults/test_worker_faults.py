"""Machines die and hang: SIGKILL, SIGSTOP/SIGCONT and SIGTERM on real worker agents."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import agent_pid, alive, assert_merged_once, attempts, pid_of_child, worker_of
from helpers import FAST, cluster_env, runs, wait_until

from shardmill import LocalCluster


@pytest.fixture
def drain_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        workers=2,
        imports=["sm_tasks"],
        env=cluster_env(),
        worker_args=["--drain-grace", "0.3"],
        # 2 s of silence before a worker is lost: on a loaded machine a draining worker's
        # hand-back must not lose a race with its expiry (FAST's is 0.5 s)
        heartbeat_interval=0.05,
        heartbeat_liveness=40,
    ) as c:
        yield c


def _slow_job(client, runs_dir: str, n: int, seconds: float):  # type: ignore[no-untyped-def]
    args = [(runs_dir, f"s{i}", i, seconds) for i in range(n)]
    return client.map("sm_tasks:slow", args, chunk_size=1)


def test_sigkill_worker_agent_mid_job(fresh_cluster: LocalCluster, runs_dir: str) -> None:
    with fresh_cluster.client() as client:
        job = _slow_job(client, runs_dir, 8, 0.3)
        victim = worker_of(client, job)
        pid = agent_pid(client, victim)
        children = pid_of_child(pid)
        # When the agent is SIGKILLed mid-shard
        os.kill(pid, signal.SIGKILL)
        # Then its children die with it, and the job ends right, each shard merged once
        assert job.result(timeout=60) == [i * 3 for i in range(8)]
        assert_merged_once(job)
        for child in children:
            wait_until(lambda c=child: not alive(c), timeout=10, what="orphaned child to die")
        lost = [a for a in attempts(job) if a.outcome == "lost"]
        assert lost and all(a.worker == victim for a in lost)
        assert victim not in {w.worker_id for w in client.workers()}


def test_sigstop_then_sigcont_worker(fresh_cluster: LocalCluster, runs_dir: str) -> None:
    with fresh_cluster.client() as client:
        job = _slow_job(client, runs_dir, 6, 0.3)
        victim = worker_of(client, job)
        pid = agent_pid(client, victim)
        # Its child has started the shard (leased is not yet started: the agent may hold it)
        shard = next(s.index for s in job.status(shards=True).shards or [] if s.worker == victim)
        wait_until(lambda: Path(runs_dir, f"s{shard}.pid").exists(), what="the shard started")
        # When the agent stops answering (SIGSTOP) / Then it is expired and the job completes
        os.kill(pid, signal.SIGSTOP)
        try:
            assert job.result(timeout=60) == [i * 3 for i in range(6)]
            assert victim not in {w.worker_id for w in client.workers()}
        finally:
            os.kill(pid, signal.SIGCONT)
        # When it wakes up / Then it re-registers cleanly and its late result is not merged again
        wait_until(
            lambda: victim in {w.worker_id for w in client.workers()},
            what="the woken worker to re-register",
        )
        assert_merged_once(job)
        history = attempts(job)
        if any(a.worker == victim and a.outcome == "lost" for a in history):
            # its shard was re-run elsewhere: the result it finished while stopped is late
            wait_until(
                lambda: job.status().duplicates >= 1,
                timeout=10,
                what="the late result to be counted as a duplicate",
            )
        # And it takes work again
        more = client.map("sm_tasks:square", [(i,) for i in range(20)], chunk_size=1)
        assert more.result(timeout=60) == [i * i for i in range(20)]


def test_sigterm_drains_running_shard_without_charging(
    fresh_cluster: LocalCluster, runs_dir: str
) -> None:
    with fresh_cluster.client() as client:
        job = _slow_job(client, runs_dir, 4, 0.5)
        victim = worker_of(client, job)
        proc = next(p for p in fresh_cluster.workers if p.pid == agent_pid(client, victim))
        # When the worker gets SIGTERM mid-shard
        proc.send_signal(signal.SIGTERM)
        # Then it finishes the running shard, disconnects and exits 0
        assert proc.wait(timeout=30) == 0
        assert job.result(timeout=60) == [i * 3 for i in range(4)]
        assert_merged_once(job)
        outcomes = [a.outcome for a in attempts(job)]
        assert outcomes == ["ok"] * 4  # nothing was charged, nothing ran twice
        assert victim not in {w.worker_id for w in client.workers()}


def test_sigterm_past_grace_hands_shard_back(drain_cluster: LocalCluster, runs_dir: str) -> None:
    with drain_cluster.client() as client:
        job = _slow_job(client, runs_dir, 2, 2.0)
        victim = worker_of(client, job)
        proc = next(p for p in drain_cluster.workers if p.pid == agent_pid(client, victim))
        # When the grace period (0.3 s) is shorter than the shard
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        # Then the shard is handed back uncharged and re-run elsewhere
        assert job.result(timeout=60) == [0, 3]
        assert_merged_once(job)
        history = attempts(job)
        handed = [a for a in history if a.worker == victim]
        assert [a.outcome for a in handed] == ["handed back"]
        assert all(a.error is None for a in history)


def test_worker_joining_mid_job_gets_work(runs_dir: str) -> None:
    with LocalCluster(workers=1, imports=["sm_tasks"], env=cluster_env(), **FAST) as cluster:
        client = cluster.client()
        job = _slow_job(client, runs_dir, 8, 0.25)
        worker_of(client, job)
        cluster.add_worker()
        cluster.wait_for_workers(2)
        assert job.result(timeout=60) == [i * 3 for i in range(8)]
        done = sorted(w.shards_done for w in client.workers())
        assert done[0] >= 1, f"the new worker did no shard: {done}"
        assert_merged_once(job)
        assert sum(runs(runs_dir, f"s{i}") for i in range(8)) == 8
        client.close()


def test_silent_master_makes_workers_reconnect(fresh_cluster: LocalCluster, runs_dir: str) -> None:
    assert fresh_cluster.master is not None
    with fresh_cluster.client() as client:
        job = _slow_job(client, runs_dir, 4, 0.8)
        worker_of(client, job)
        before = {w.worker_id for w in client.workers()}
        # When the master is stopped for longer than the workers' patience (0.5 s), while
        # both running shards finish (0.8 s each)
        fresh_cluster.master.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: _finished(runs_dir) >= 2, what="shards to finish meanwhile")
        finally:
            fresh_cluster.master.send_signal(signal.SIGCONT)
        # Then the workers reconnect and deliver, and nothing is lost or merged twice
        assert job.result(timeout=60) == [i * 3 for i in range(4)]
        assert_merged_once(job)
        assert {w.worker_id for w in client.workers()} == before


def _finished(runs_dir: str) -> int:
    return len(list(Path(runs_dir).glob("*.done")))
