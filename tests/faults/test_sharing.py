"""Stragglers and sharing with real processes: a speculative backup overtakes a stalled shard,
and a small job of another client runs at once beside a big one (fair share by client key)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import assert_merged_once
from helpers import FAST, cluster_env, run_cli, wait_until

from shardmill import Client, Job, LocalCluster


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """2 workers x 2 slots; backups after 0.3 s at the least; a second client, bob."""
    with LocalCluster(
        workers=2,
        slots=2,
        imports=["sm_tasks"],
        env=cluster_env(),
        master_args=["--speculate-min-age", "0.3"],
        **FAST,
    ) as c:
        made = run_cli("keygen", "--client", "bob", str(c.keys_dir))
        assert made.returncode == 0, made.stderr
        assert c.master is not None
        c.master.send_signal(signal.SIGHUP)
        yield c


def _run(client: Client, slow_file: Path, **spec: object) -> Job:
    args = [(i, 0.1, str(slow_file)) for i in range(40)]
    return client.map("sm_tasks:stall_on", args, chunk_size=1, **spec)  # type: ignore[arg-type]


def _took(job: Job) -> float:
    info = job.status()
    assert info.finished_at is not None and info.started_at is not None
    return info.finished_at - info.started_at


def test_a_backup_overtakes_a_stalled_shard_and_the_stalled_attempt_is_cancelled(
    pair: LocalCluster, tmp_path: Path
) -> None:
    slow_file = tmp_path / "slow"
    slow_file.write_text("")
    with pair.client() as client:
        # Given the job's time with no straggler (40 shards of 0.1 s on 4 slots)
        clean = _run(client, slow_file)
        assert clean.result(timeout=60) == [i * 3 for i in range(40)]
        baseline = _took(clean)
        # When one worker stalls every shard it runs (60 s instead of 0.1 s)
        slow = client.workers()[0].worker_id
        slow_file.write_text(slow)
        job = _run(client, slow_file)
        # Then backups on the other worker finish the job within 3 x the clean time
        assert job.result(timeout=60) == [i * 3 for i in range(40)]
        assert _took(job) < 3 * baseline, (_took(job), baseline)
        assert_merged_once(job)
        shards = job.status(shards=True).shards or []
        backups = [a for s in shards for a in s.history if a.backup]
        assert backups and all(a.outcome == "ok" and a.worker != slow for a in backups)
        stalled = [a for s in shards for a in s.history if a.worker == slow and a.outcome != "ok"]
        assert stalled and all(a.outcome == "superseded" for a in stalled)
        started = [
            line for line in client.metrics().splitlines() if "backups_started_total" in line
        ]
        assert float(started[-1].split()[-1]) >= len(backups)
        # And the stalled attempts were cancelled on the slow worker: its slots are free again
        wait_until(
            lambda: next(w for w in client.workers() if w.worker_id == slow).busy == 0,
            timeout=10,
            what="the slow worker's stalled children killed",
        )
        # And without speculation the same job is held by the straggler (for 60 s): still
        # running at 3 x the clean time from its start (the master's clock, this host's)
        never = _run(client, slow_file, speculate_after=0)
        wait_until(lambda: never.progress().shards_done >= 38, timeout=30, what="most of it")
        started = never.status().started_at
        assert started is not None
        while time.time() < started + 3 * baseline:  # poll: it must not finish meanwhile
            assert never.progress().state == "running"
        left = [s for s in never.status(shards=True).shards or [] if s.state != "done"]
        assert left and all(s.worker == slow for s in left), left
        client.cancel(never.id)
        slow_file.write_text("")


def test_a_small_job_of_another_client_finishes_at_once_beside_a_big_one(
    pair: LocalCluster, tmp_path: Path
) -> None:
    assert pair.keys_dir is not None
    slow_file = tmp_path / "none"
    slow_file.write_text("")
    bob_keys = Path(pair.keys_dir) / "handout" / "client-bob"
    with pair.client() as alice:
        # Given a 2,000-shard job of 0.1 s shards filling both workers
        big = alice.map(
            "sm_tasks:stall_on", [(i, 0.1, str(slow_file)) for i in range(2000)], chunk_size=1
        )
        wait_until(lambda: big.progress().shards_done >= 8, what="the big job under way")
        # When another client submits 4 shards
        bob = wait_until(lambda: _accepted(pair, bob_keys), what="bob accepted")
        with bob:
            t0 = time.monotonic()
            small = bob.map(
                "sm_tasks:stall_on", [(i, 0.1, str(slow_file)) for i in range(4)], chunk_size=1
            )
            # Then it finishes within 2 s of its submit, long before the big job
            assert small.result(timeout=30) == [0, 3, 6, 9]
            assert time.monotonic() - t0 < 2.0
        assert big.progress().state == "running"
        alice.cancel(big.id)


def _accepted(cluster: LocalCluster, keys: Path) -> Client | None:
    client = Client(cluster.client_address, keys=keys, connect_timeout=10)
    try:
        client.jobs()
    except Exception:  # the SIGHUP is on its way
        client.close()
        return None
    return client
