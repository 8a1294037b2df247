"""Code has bugs: crashes, exits, segfaults, raises and hangs in tasks, with real processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from faults import UNCHARGED, alive, assert_merged_once, attempts, read_pid
from helpers import cluster_env, runs, wait_until
from shared import SharedCluster

from shardmill import Failed, LocalCluster, RemoteError


@pytest.fixture(scope="module")
def _shared() -> Iterator[SharedCluster]:
    """The module's cluster (as conftest's) beats as fast as FAST but waits 2 s, not 0.5, before
    a worker expires: these tests kill and hang children, never workers, and on a loaded
    machine an agent could go 0.5 s unheard, be taken for lost, and its shard show "lost"."""

    def start() -> LocalCluster:
        env = cluster_env()
        fast = {"heartbeat_interval": 0.05, "heartbeat_liveness": 40}
        return LocalCluster(workers=2, imports=["sm_tasks"], env=env, **fast)

    shared = SharedCluster(start)
    yield shared
    shared.close()


def _history(job, shard: int = 0):  # type: ignore[no-untyped-def]
    return job.status(shards=True).shards[shard].history


def test_child_sigkilled_mid_shard_is_retried(cluster: LocalCluster, runs_dir: str) -> None:
    with cluster.client() as client:
        # Given a shard whose first execution blocks
        job = client.map("sm_tasks:block_first", [(runs_dir, "k", 21)], chunk_size=1)
        # When its child process is SIGKILLed from outside
        os.kill(read_pid(runs_dir, "k"), signal.SIGKILL)
        # Then the job ends with the right result and the crash is on record with its signal
        assert job.result(timeout=60) == [42]
        first = _history(job)[0]
        assert first.outcome == "crash" and first.error.signal == "SIGKILL"
        assert_merged_once(job)
        assert runs(runs_dir, "k") == 2


@pytest.mark.parametrize(
    ("func", "args", "check"),
    [
        ("exit_first", (3,), lambda e: e.exit_code == 3),
        ("segfault_first", (), lambda e: e.signal == "SIGSEGV"),
        ("kill_self_first", (), lambda e: e.signal == "SIGKILL"),
    ],
)
def test_child_death_is_reported_and_retried(
    cluster: LocalCluster, runs_dir: str, func: str, args: tuple, check
) -> None:  # type: ignore[no-untyped-def,type-arg]
    with cluster.client() as client:
        job = client.map(f"sm_tasks:{func}", [(runs_dir, "k", *args)])
        value = job.result(timeout=60)[0]
        first, second = _history(job)
        assert first.outcome == "crash" and check(first.error), first
        assert second.outcome == "ok"
        assert value == (3 if func == "exit_first" else "survived")
        assert_merged_once(job)
        # the crashed child was replaced: both workers keep serving
        assert client.call("sm_tasks:square", 6, timeout=30) == 36


def test_raises_on_first_attempt_only(cluster: LocalCluster, runs_dir: str) -> None:
    with cluster.client() as client:
        job = client.map("sm_tasks:flaky", [(runs_dir, f"f{i}", i) for i in range(4)], chunk_size=1)
        assert job.result(timeout=60) == [0, 10, 20, 30]
        for shard in range(4):
            outcomes = [a.outcome for a in _history(job, shard)]
            assert outcomes == ["error", "ok"]
        assert_merged_once(job)


def test_always_raises_fails_with_every_attempt_named(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        job = client.map("sm_tasks:always_fails", [(5,)], max_attempts=3)
        with pytest.raises(RemoteError) as info:
            job.result(timeout=60)
        text = str(info.value)
        assert "shard 0 of 1 failed after 3 attempt(s)" in text
        for n in (1, 2, 3):
            assert f"attempt {n} on worker" in text
        assert "KeyError" in text and "no such thing as 5" in text and "next step" in text
        attempts = _history(job)
        # retries go to another worker when one exists
        assert len({a.worker for a in attempts}) == 2
        assert job.status().state == "failed"


def test_allow_failures_completes_and_lists_missing(cluster: LocalCluster, runs_dir: str) -> None:
    with cluster.client() as client:
        # Given one poison shard among three, and a job that allows one failure
        args = [(runs_dir, "a", 1, 0.0), "poison", (runs_dir, "b", 2, 0.0)]
        job = client.map("sm_tasks:counted", args, chunk_size=1, max_attempts=2, allow_failures=1)
        # Then the job completes, the missing shard's item is a Failed marker and it is listed
        values = job.result(timeout=60)
        assert values == [2, Failed(job.id, 1), 3] and not values[1]
        assert f"shardmill why {job.id} 1" in str(values[1])
        info = job.status()
        assert info.state == "done" and info.missing_shards == [1]
        # And without allowance the same job fails
        strict = client.map("sm_tasks:counted", args, chunk_size=1, max_attempts=1)
        with pytest.raises(RemoteError, match="shard 1 of 3"):
            strict.result(timeout=60)


def test_task_past_its_timeout_is_killed_and_retried(cluster: LocalCluster, runs_dir: str) -> None:
    with cluster.client() as client:
        job = client.map("sm_tasks:sleep_first", [(runs_dir, "t", 30.0)], task_timeout=0.5)
        assert job.result(timeout=60) == ["quick"]
        first = _history(job)[0]
        assert first.outcome == "timeout" and "task_timeout=0.5" in first.error.message
        assert_merged_once(job)


@pytest.mark.parametrize("fault", ["exit", "hang"])
def test_a_child_lost_with_tasks_queued_in_its_pipe_charges_only_its_own(
    cluster: LocalCluster, runs_dir: str, fault: str
) -> None:
    """Short shards queue in a child's pipe behind the running one; when that child dies or
    runs past its timeout, the queued ones run in its replacement, uncharged and once."""
    with cluster.client() as client:
        args = [(runs_dir, f"q{i}", i, 150, fault) for i in range(300)]
        job = client.map("sm_tasks:fault_with_queue", args, chunk_size=1, task_timeout=1.0)
        assert job.result(timeout=60) == [i + 1 for i in range(300)]
        assert os.path.exists(os.path.join(runs_dir, "queued-behind")), "no task was queued"
        # Shards held up behind the hung one may run elsewhere too (backups: `superseded`),
        # the hung one included, before its timeout kills the child
        failed = [a.outcome for a in attempts(job) if a.outcome not in UNCHARGED]
        assert failed == ["crash"] if fault == "exit" else failed in ([], ["timeout"]), failed
        assert_merged_once(job)
        assert runs(runs_dir, "q150") == 2


def test_a_child_that_dies_idle_is_replaced_and_charges_nothing(
    cluster: LocalCluster, runs_dir: str
) -> None:
    with cluster.client() as client:
        # Given a child that exits 0.2 s after its task returned, between tasks
        pid = client.call("sm_tasks:die_idle", runs_dir, 0.2, timeout=30)
        # (reaped by its agent: a process whose main thread shows "Z" may still be exiting)
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10, what="its reaping")
        # When more shards come / Then none is charged with its death: each runs once, ok
        job = client.map("sm_tasks:square", [(i,) for i in range(20)], chunk_size=1)
        assert job.result(timeout=60) == [i * i for i in range(20)]
        # (a backup speculation started, superseded by the shard's own "ok", is no charge)
        assert [a.outcome for a in attempts(job) if a.outcome != "superseded"] == ["ok"] * 20


def test_gil_holding_task_does_not_starve_heartbeats(cluster: LocalCluster) -> None:
    # Given heartbeats every 50 ms and expiry after 10 of them
    with cluster.client() as client:
        before = {w.worker_id for w in client.workers()}
        # When a task holds the GIL for 20 heartbeat intervals
        job = client.map("sm_tasks:hold_gil", [(1.0,)])
        assert job.result(timeout=60) == [True]
        # Then no worker was expired and the shard ran exactly once
        assert {w.worker_id for w in client.workers()} == before
        assert len(_history(job)) == 1
        assert job.status().duplicates == 0


def test_cancel_kills_running_children(cluster: LocalCluster, runs_dir: str) -> None:
    with cluster.client() as client:
        job = client.map("sm_tasks:slow", [(runs_dir, "c", 1, 60.0)], chunk_size=1)
        pid = read_pid(runs_dir, "c")
        job.cancel()
        wait_until(lambda: not alive(pid), timeout=10, what="the cancelled child to die")
        wait_until(lambda: all(w.busy == 0 for w in client.workers()), what="workers free")
        assert client.call("sm_tasks:square", 2, timeout=30) == 4
