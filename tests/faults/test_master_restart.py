"""Kill the master with SIGKILL at several points, restart it on the same state dir."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import WaitingClient, assert_merged_once
from helpers import FAST, cli_json, cluster_env, run_cli, runs, wait_until

from shardmill import LocalCluster, exitcodes
from shardmill.errors import JobFailed
from shardmill.master.store import DB_NAME

SHARDS = 64
EXPECTED = [i + 1 for i in range(SHARDS)]


@pytest.fixture
def state_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(
        workers=2, imports=["sm_tasks"], env=cluster_env(), state_dir=tmp_path / "state", **FAST
    ) as c:
        yield c


def _submit(cluster: LocalCluster, runs_dir: str, delay: float = 0.03) -> str:
    with cluster.client() as client:
        args = [(runs_dir, f"k{i}", i, delay) for i in range(SHARDS)]
        return client.map("sm_tasks:counted", args, chunk_size=1).id


def _done_shards(cluster: LocalCluster, job_id: str) -> set[int]:
    with cluster.client() as client:
        info = client.status(job_id, shards=True)
    return {s.index for s in info.shards or [] if s.state == "done"}


def _restart_and_finish(
    cluster: LocalCluster, job_id: str, runs_dir: str, merged_before: set[int]
) -> None:
    worker_pids = [p.pid for p in cluster.workers]
    cluster.kill_master()
    cluster.start_master()
    with cluster.client() as client:
        job = client.job(job_id)
        assert job.result(timeout=60) == EXPECTED
        assert_merged_once(job)
        # Then shards merged before the kill never ran again
        for i in merged_before:
            assert runs(runs_dir, f"k{i}") == 1, f"shard {i} was merged before the kill but re-ran"
        # And re-runs are bounded by the shards in flight at the kill (one per slot)
        total = sum(runs(runs_dir, f"k{i}") for i in range(SHARDS))
        assert SHARDS <= total <= SHARDS + 2, total
        # And the same worker processes carry on, re-registered
        assert all(p.poll() is None for p in cluster.workers)
        wait_until(
            lambda: sorted(w.pid for w in client.workers()) == sorted(worker_pids),
            what="the same workers to re-register",
        )


def test_kill_before_the_first_merge(state_cluster: LocalCluster, runs_dir: str) -> None:
    job_id = _submit(state_cluster, runs_dir, delay=0.2)
    _restart_and_finish(state_cluster, job_id, runs_dir, merged_before=set())


def test_kill_mid_job(state_cluster: LocalCluster, runs_dir: str) -> None:
    job_id = _submit(state_cluster, runs_dir)
    wait_until(lambda: len(_done_shards(state_cluster, job_id)) >= 20, what="20 merged shards")
    merged = _done_shards(state_cluster, job_id)
    _restart_and_finish(state_cluster, job_id, runs_dir, merged_before=merged)


def test_kill_after_the_last_merge_before_the_result_is_read(
    state_cluster: LocalCluster, runs_dir: str
) -> None:
    job_id = _submit(state_cluster, runs_dir, delay=0.0)
    wait_until(lambda: len(_done_shards(state_cluster, job_id)) == SHARDS, what="all merged")
    _restart_and_finish(state_cluster, job_id, runs_dir, merged_before=set(range(SHARDS)))


def test_kill_inside_a_merge_commit(tmp_path: Path, runs_dir: str) -> None:
    # Given a master that dies inside its 10th commit (fault injection), writes in flight
    env = {**cluster_env(), "SHARDMILL_FAULT_CRASH_IN_COMMIT": "10"}
    with LocalCluster(
        workers=2, imports=["sm_tasks"], env=env, state_dir=tmp_path / "s", **FAST
    ) as cluster:
        job_id = _submit(cluster, runs_dir)
        assert cluster.master is not None
        assert cluster.master.wait(timeout=60) == 70
        merged = _stored_merged(tmp_path / "s")
        cluster.env.pop("SHARDMILL_FAULT_CRASH_IN_COMMIT")
        _restart_and_finish(cluster, job_id, runs_dir, merged_before=merged)


def test_a_result_sent_while_the_master_is_down_outlasts_the_reconnects(
    tmp_path: Path, runs_dir: str
) -> None:
    # Given a worker of 2 slots (reconnecting at least every 0.5 s) running a 0.8 s shard and
    # a 2.5 s one
    env = {**cluster_env(), "SHARDMILL_WORKER_RECONNECT_MAX": "0.5"}
    logs = tmp_path / "logs"
    with LocalCluster(
        workers=1, slots=2, imports=["sm_tasks"], env=env, state_dir=tmp_path / "s",
        log_dir=logs, **FAST,
    ) as cluster:  # fmt: skip
        with cluster.client() as client:
            args = [(runs_dir, "short", 0, 0.8), (runs_dir, "long", 1, 2.5)]
            job_id = client.map("sm_tasks:slow", args, chunk_size=1).id
        wait_until(lambda: runs(runs_dir, "short") and runs(runs_dir, "long"), what="both")
        # When the master is killed, and stays down while both end: the short one's result goes
        # to no one; the worker reconnects again and again, and after the long one's result
        # (1.7 s later) twice more, each time dropping what its old socket held
        cluster.kill_master()
        wait_until(lambda: Path(runs_dir, "long.done").exists(), what="the long shard's end")
        seen = _reconnects(logs)
        wait_until(lambda: _reconnects(logs) >= seen + 2, what="two reconnects more")
        cluster.start_master()
        with cluster.client() as client:
            job = client.job(job_id)
            assert job.result(timeout=60) == [0, 3]
            shards = client.status(job_id, shards=True).shards or []
    # Then the short one's result, kept since the master was last heard (not since the last
    # reconnect), came to the new master: neither shard ran again, each story holds its run
    assert (runs(runs_dir, "short"), runs(runs_dir, "long")) == (1, 1)
    assert [[a.outcome for a in s.history] for s in shards] == [["ok (late)"]] * 2, shards


def _reconnects(logs: Path) -> int:
    return (logs / "worker-0.log").read_text().count("reconnecting (backoff")


def _stored_merged(state_dir: Path) -> set[int]:
    import sqlite3

    db = sqlite3.connect(state_dir / "shardmill.db")
    try:
        return {s for (s,) in db.execute("SELECT shard FROM shards WHERE state = 'done'")}
    finally:
        db.close()


def test_waiting_client_rides_through_a_restart(state_cluster: LocalCluster, runs_dir: str) -> None:
    job_id = _submit(state_cluster, runs_dir)
    waiter = WaitingClient(state_cluster, job_id)
    wait_until(lambda: len(_done_shards(state_cluster, job_id)) >= 10, what="10 merged shards")
    state_cluster.kill_master()
    state_cluster.start_master()
    waiter.join()
    assert waiter.got.get("result") == EXPECTED


def test_finished_jobs_stay_queryable_and_can_be_pruned(
    state_cluster: LocalCluster, runs_dir: str
) -> None:
    job_id = _submit(state_cluster, runs_dir, delay=0.0)
    with state_cluster.client() as client:
        assert client.job(job_id).result(timeout=60) == EXPECTED
    state_cluster.kill_master()
    state_cluster.start_master()
    with state_cluster.client() as client:
        assert client.job(job_id).result(timeout=10) == EXPECTED
        assert client.status(job_id).state == "done"
        assert [j.job_id for j in client.prune(0)] == [job_id]
        assert client.jobs() == []
    state_cluster.kill_master()
    state_cluster.start_master()
    with state_cluster.client() as client:
        assert client.jobs() == []


def test_a_second_master_on_the_same_state_dir_refuses(state_cluster: LocalCluster) -> None:
    assert state_cluster.state_dir is not None and state_cluster.master is not None
    proc = run_cli(
        "master",
        "--port",
        "0",
        "--client-port",
        "0",
        "--state-dir",
        state_cluster.state_dir,
        timeout=30,
    )
    assert proc.returncode == exitcodes.STATE
    assert f"master pid {state_cluster.master.pid}" in proc.stderr
    assert "one master per state directory" in proc.stderr


def test_a_truncated_database_is_refused_and_left_untouched(tmp_path: Path, runs_dir: str) -> None:
    state = tmp_path / "state"
    with (
        LocalCluster(
            workers=1, imports=["sm_tasks"], env=cluster_env(), state_dir=state, **FAST
        ) as cluster,
        cluster.client() as client,
    ):
        assert client.call("sm_tasks:square", 3, timeout=30) == 9
    db = state / "shardmill.db"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    for extra in ("shardmill.db-wal", "shardmill.db-shm"):
        (state / extra).unlink(missing_ok=True)
    before = db.read_bytes()
    proc = run_cli(
        "master", "--port", "0", "--client-port", "0", "--state-dir", str(state), timeout=30
    )
    assert proc.returncode == exitcodes.STATE, proc.stderr
    assert "shardmill.db" in proc.stderr and "left untouched" in proc.stderr
    assert db.read_bytes() == before


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    import sqlite3

    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "shardmill.db")
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    proc = run_cli(
        "master", "--port", "0", "--client-port", "0", "--state-dir", str(state), timeout=30
    )
    assert proc.returncode == exitcodes.STATE
    assert "not a shardmill state database" in proc.stderr


def _running_shards(cluster: LocalCluster, job_id: str) -> set[int]:
    with cluster.client() as client:
        info = client.status(job_id, shards=True)
    return {s.index for s in info.shards or [] if s.state == "leased"}


def test_two_restarts_keep_started_at_every_execution_and_honest_counters(
    state_cluster: LocalCluster, runs_dir: str
) -> None:
    # Given a job of 24 half-second shards on 2 one-slot workers, started
    n = 24
    with state_cluster.client() as client:
        args = [(runs_dir, f"t{i}", i, 0.5) for i in range(n)]
        job_id = client.map("sm_tasks:counted", args, chunk_size=1).id
        wait_until(lambda: client.status(job_id).started_at is not None, what="the job to start")
        started_at = client.status(job_id).started_at
    in_flight: set[int] = set()
    # When the master is killed twice while shards run, and started again each time
    for merged in (2, 8):
        wait_until(lambda m=merged: len(_done_shards(state_cluster, job_id)) >= m, what="merges")
        wait_until(lambda: _running_shards(state_cluster, job_id), what="a shard running")
        in_flight |= _running_shards(state_cluster, job_id)
        state_cluster.kill_master()
        state_cluster.start_master()
    with state_cluster.client() as client:
        job = client.job(job_id)
        assert job.result(timeout=60) == [i + 1 for i in range(n)]
        info = client.status(job_id, shards=True)
        assert_merged_once(job)
    # Then started_at is still the first dispatch, and both restarts are on record
    assert info.started_at == pytest.approx(started_at, abs=1e-6)
    assert len(info.restarts) == 2 and info.finished_at is not None
    assert all(info.submitted_at < t < info.finished_at for t in info.restarts)
    shards = info.shards or []
    # And every execution of every shard is in its story: as many attempts as the task ran
    for s in shards:
        story = [(a.attempt, a.worker, a.outcome, a.started, a.ended) for a in s.history]
        assert len(s.history) == runs(runs_dir, f"t{s.index}"), (s.index, story, info.restarts)
        assert [a.attempt for a in s.history] == sorted({a.attempt for a in s.history})
    # And a shard running at a kill keeps its execution's true start, before the restart,
    # and its true length (re-reported by its worker: not a ~1 ms attempt at the reconnect)
    for i in in_flight:
        (ok,) = [a for a in shards[i].history if a.outcome.startswith("ok")]
        assert ok.ended is not None and ok.ended - ok.started >= 0.45, shards[i]
        assert any(ok.started < t for t in info.restarts), shards[i]
    # And the counters say what they count: no worker died, so every execution's result came
    # and was merged or dropped; `duplicates` are the executions beyond each shard's merged
    # one, by the task's own count, each a "duplicate" attempt in its story
    executions = sum(runs(runs_dir, f"t{i}") for i in range(n))
    outcomes = [a.outcome for s in shards for a in s.history]
    assert info.duplicates == outcomes.count("duplicate") == executions - n, outcomes
    # and copies of results the stories hold, resent as workers reconnected, apart from them
    assert info.resent >= 1


def _summarized(state_dir: Path) -> set[str]:
    """The jobs whose summary the state dir holds (all a restart reads of a finished job)."""
    db = sqlite3.connect(f"file:{state_dir / DB_NAME}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT job_id FROM summaries")}
    finally:
        db.close()


def test_a_finished_job_is_its_summary_after_a_restart_and_why_reads_its_story(
    state_cluster: LocalCluster, runs_dir: str, tmp_path: Path
) -> None:
    # Given a job that rode through a master restart to the end, and a job whose shard raised
    n = 8
    with state_cluster.client() as client:
        args = [(runs_dir, f"s{i}", i, 0.1) for i in range(n)]
        job_id = client.map("sm_tasks:counted", args, chunk_size=1).id
    wait_until(lambda: len(_done_shards(state_cluster, job_id)) >= 2, what="2 merged shards")
    state_cluster.kill_master()
    state_cluster.start_master()
    with state_cluster.client() as client:
        assert client.job(job_id).result(timeout=60) == [i + 1 for i in range(n)]
        failed = client.map("sm_tasks:print_then_raise", [(3,)], chunk_size=1, max_attempts=1)
        with pytest.raises(JobFailed):
            failed.result(timeout=60)
        before = [client.status(j) for j in (job_id, failed.id)]
    story = cli_json("why", failed.id, "0", master=state_cluster)
    # When the master restarts again, after both finished
    state_cluster.kill_master()
    state_cluster.start_master()
    # Then the state dir holds their summaries, and each is answered as before the restart
    assert {job_id, failed.id} <= _summarized(tmp_path / "state")
    with state_cluster.client() as client:
        assert [client.status(j) for j in (job_id, failed.id)] == before
    done = before[0]
    assert done.state == "done" and done.shards_done == n and done.started_at is not None
    # (the summary keeps the restart the job ran through, not the one after it ended)
    assert len(done.restarts) == 1 and done.started_at < done.restarts[0] < done.finished_at
    assert done.resent >= 1  # copies of results resent at the reconnect, before it ended
    # And `why` of the failed shard reads its story from the state dir: the task's own error
    assert cli_json("why", failed.id, "0", master=state_cluster) == story
    (attempt,) = story["history"]
    assert "ValueError: bad value 3" in attempt["error"]["traceback"]
    assert attempt["output"] == "computing shard input 3\n"
    # And so does the done job's: each shard's successful attempt
    shard = cli_json("why", job_id, "5", master=state_cluster)
    assert [a["outcome"] for a in shard["history"]][-1].startswith("ok")
