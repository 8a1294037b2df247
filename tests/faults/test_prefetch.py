"""Prefetch: short shards wait on a worker behind a running one, and a lost or draining worker
never charges the ones that had not started. Real master, agents and children."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator

import pytest
from faults import agent_pid, assert_merged_once, attempts
from helpers import FAST, cluster_env, runs, wait_until

from shardmill import Client, LocalCluster
from shardmill.wire.protocol import WorkerInfo

# Shards of up to 5 s count as short here, so tasks that sleep long enough to watch qualify.
PREFETCH = ["--prefetch-below", "5"]


@pytest.fixture
def prefetch_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        workers=2,
        imports=["sm_tasks"],
        env=cluster_env(),
        master_args=PREFETCH,
        worker_args=["--drain-grace", "10"],
        # Beats as fast as FAST, but 2 s of silence before a worker expires: a draining agent
        # on a loaded machine must not be taken for a lost one (its queued shard is then
        # "lost", not "handed back"); a SIGKILLed one is still found within 2 s.
        heartbeat_interval=0.05,
        heartbeat_liveness=40,
    ) as c:
        yield c


def _slow_job(client: Client, runs_dir: str, n: int, seconds: float):  # type: ignore[no-untyped-def]
    args = [(runs_dir, f"s{i}", i, seconds) for i in range(n)]
    return client.map("sm_tasks:slow", args, chunk_size=1)


def _job_with_a_queue(client: Client, runs_dir: str):  # type: ignore[no-untyped-def]
    """Eight 0.6 s shards, and the worker that holds one queued behind its running one."""
    job = _slow_job(client, runs_dir, 8, 0.6)
    return job, _with_queue(client).worker_id


def _with_queue(client: Client) -> WorkerInfo:
    """A worker holding a shard queued behind its running one."""
    return wait_until(
        lambda: next((w for w in client.workers() if w.queued), None),
        what="a worker with a queued shard",
    )


def test_short_shards_queue_on_the_worker_and_start_back_to_back(
    prefetch_cluster: LocalCluster, runs_dir: str
) -> None:
    with prefetch_cluster.client() as client:
        job = _slow_job(client, runs_dir, 10, 0.1)
        # Once a shard is known to be short, each worker holds one more than its slot
        held = _with_queue(client)
        assert (held.slots, held.busy, held.queued) == (1, 1, 1)
        assert job.result(timeout=60) == [i * 3 for i in range(10)]
        assert_merged_once(job)
        assert [runs(runs_dir, f"s{i}") for i in range(10)] == [1] * 10
        # Then a worker got its next shard before the previous one ended: no gap between them
        by_worker: dict[str, list[tuple[float, float]]] = {}
        for a in attempts(job):
            assert a.outcome == "ok" and a.ended is not None
            by_worker.setdefault(a.worker, []).append((a.started, a.ended))
        overlaps = 0
        for spans in by_worker.values():
            spans.sort()
            overlaps += sum(nxt[0] < prev[1] for prev, nxt in itertools.pairwise(spans))
        assert overlaps >= 2, by_worker


def test_lost_worker_charges_its_running_shard_not_its_queued_one(
    prefetch_cluster: LocalCluster, runs_dir: str
) -> None:
    with prefetch_cluster.client() as client:
        job, victim = _job_with_a_queue(client, runs_dir)
        # When the agent holding a running and a queued shard is SIGKILLed
        os.kill(agent_pid(client, victim), signal.SIGKILL)
        # Then the job ends right; the running shard is charged, the queued one is not
        assert job.result(timeout=60) == [i * 3 for i in range(8)]
        assert_merged_once(job)
        mine = [a for a in attempts(job) if a.worker == victim and a.outcome != "ok"]
        assert sorted(a.outcome for a in mine) == ["lost", "never started"], mine
        info = job.status(shards=True)
        assert info.shards is not None
        never = next(a for a in mine if a.outcome == "never started")
        assert never.error is None
        # The queued shard never ran on the victim: it ran exactly once, elsewhere
        queued = next(s for s in info.shards if never in s.history)
        assert runs(runs_dir, f"s{queued.index}") == 1


def test_sigterm_hands_back_the_queued_shard_and_finishes_the_running_one(
    prefetch_cluster: LocalCluster, runs_dir: str
) -> None:
    with prefetch_cluster.client() as client:
        job, victim = _job_with_a_queue(client, runs_dir)
        proc = next(p for p in prefetch_cluster.workers if p.pid == agent_pid(client, victim))
        # When the worker is told to drain while it holds a queued shard
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        # Then the running shard finished there, the queued one was handed back uncharged
        assert job.result(timeout=60) == [i * 3 for i in range(8)]
        assert_merged_once(job)
        mine = [a.outcome for a in attempts(job) if a.worker == victim]
        assert mine.count("handed back") == 1, mine
        assert all(o in ("ok", "handed back") for o in mine), mine
        assert [runs(runs_dir, f"s{i}") for i in range(8)] == [1] * 8


def test_long_shards_are_not_hoarded_and_each_worker_shows_its_round_trip() -> None:
    """The window is for short shards only: 40 half-second shards on 4 one-slot workers run
    in 10 rounds, never queued on a worker, so the job takes about 40 x 0.5 / 4 = 5 s."""
    cluster = LocalCluster(workers=4, imports=["sm_tasks"], env=cluster_env(), **FAST)
    with cluster, cluster.client() as client:
        # Given a job of short shards: each worker gets a window, shown with its round trip
        # (the master pings on every beat); its children have imported the task module. More
        # shards than 4 full windows (256 each): on a loaded machine (a long round trip) the
        # first workers' windows could otherwise take them all before the last ones get one
        n = 2000
        squares = client.map("sm_tasks:square", [(i,) for i in range(n)], chunk_size=1).result()
        assert squares == [i * i for i in range(n)]
        shown = client.workers()
        assert all(w.rtt is not None and 0 < w.rtt < 1 and w.window >= 1 for w in shown), shown
        # When a job of half-second shards runs
        job = client.map("sm_tasks:nap", [(i, 0.5) for i in range(40)], chunk_size=1)
        most = 0
        while (info := job.progress()).state == "running":
            workers = client.workers()
            most = max(most, *(w.busy + w.queued for w in workers))
            assert all(w.queued == 0 for w in workers), workers
        # Then no worker ever held more than its one slot, and the job took about 5 s
        assert job.result(timeout=60) == [i * 3 for i in range(40)]
        assert most == 1
        assert info.finished_at is not None and info.started_at is not None
        took = info.finished_at - info.started_at
        assert took < 6.0, f"40 x 0.5 s shards on 4 workers took {took:.2f} s"
        assert_merged_once(job)


def test_a_new_workers_round_trip_is_known_at_once() -> None:
    """Until the master knows a worker's round trip its queue is one shard deep: a fresh
    cluster's first job of short tasks ran slow until the next heartbeat measured it."""
    # Given a cluster whose heartbeats are 5 s apart
    with (
        LocalCluster(
            workers=1, imports=["sm_tasks"], env=cluster_env(), heartbeat_interval=5.0
        ) as cluster,
        cluster.client() as client,
    ):
        # Then the worker's round trip is measured well before the first beat
        wait_until(lambda: client.workers()[0].rtt is not None, timeout=2.0, what="an rtt")
