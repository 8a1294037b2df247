"""Batches: once a dataset op's shards prove short, several travel in one task and come back
folded into one partial. Real master, agents and children; results checked against NumPy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from faults import UNCHARGED, assert_merged_once

from shardmill import Client, LocalCluster
from shardmill.job import Job

ROWS, COLS, SHARDS = 64_000, 4, 64
BATCH_OUTCOMES = {"its batch failed", "lost with its batch", "dropped with its batch"}
NOT_ITS_FAULT = {*UNCHARGED, *BATCH_OUTCOMES}  # a mate's attempts, none charged to it


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    data = np.random.default_rng(3).normal(1.0, 2.0, size=(ROWS, COLS))
    path = tmp_path_factory.mktemp("batches") / "table.npy"
    np.save(path, data)
    return path, data


def _poison_job(client: Client, path: Path, attempts: int, options: dict[str, int]):  # type: ignore[no-untyped-def]
    """sm_ops:poison over the table, one failed shard allowed; the job and its result."""
    job = client.submit(
        "sm_ops:poison",
        path,
        shards=SHARDS,
        max_attempts=attempts,
        allow_failures=1,
        options=options,
    )
    return job, job.result(timeout=60)


def _batched_starts(job: Job) -> Counter[tuple[str, float]]:
    """(worker, lease time) -> shards leased together: more than one means a batch."""
    info = job.status(shards=True)
    assert info.shards is not None
    return Counter((a.worker, a.started) for s in info.shards for a in s.history)


def test_short_shards_travel_in_batches_and_each_is_merged_once(
    ops_cluster: LocalCluster, table: tuple[Path, np.ndarray]
) -> None:
    path, data = table
    with ops_cluster.client() as client:
        job = client.submit("column_stats", path, shards=SHARDS)
        stats = job.result(timeout=60)
        # Then the answer is NumPy's, from every shard exactly once
        np.testing.assert_allclose(stats["mean"], data.mean(axis=0), rtol=1e-9)
        np.testing.assert_allclose(stats["std"], data.std(axis=0), rtol=1e-9)
        assert stats["shards_merged"] == SHARDS and stats["count"] == ROWS
        assert_merged_once(job)
        # And shards went out in batches (leased together), with single shards at the tail
        sizes = sorted(_batched_starts(job).values(), reverse=True)
        assert sum(sizes) == SHARDS and sizes[0] > 1 and sizes[-1] == 1, sizes
        assert len(sizes) < SHARDS / 2, sizes


def test_a_shard_that_kills_its_batch_is_found_running_alone(
    ops_cluster: LocalCluster, table: tuple[Path, np.ndarray]
) -> None:
    path, _ = table
    poison_row = ROWS * 3 // 4  # shard 48 of 64, well after batching starts
    with ops_cluster.client() as client:
        job, result = _poison_job(client, path, 2, {"crash_row": poison_row})
        # Then only the poison shard is missing; its batch mates ran again and merged once
        poison = poison_row * SHARDS // ROWS
        assert result["missing_shards"] == [poison]
        assert result["rows"] == ROWS - ROWS // SHARDS
        info = job.status(shards=True)
        assert info.shards is not None
        for shard in info.shards:
            outcomes = [a.outcome for a in shard.history]
            if shard.index == poison:
                assert outcomes.count("crash") == 2, outcomes  # charged alone, twice
                continue
            # (on a loaded machine a backup may start, and be superseded after the "ok")
            assert shard.merged == 1 and "ok" in outcomes, outcomes
            assert set(outcomes) <= NOT_ITS_FAULT, outcomes  # not charged
        mates = [s for s in info.shards if "its batch failed" in {a.outcome for a in s.history}]
        assert len(mates) >= 2  # the poison shard did die inside a batch


def test_a_shard_that_raises_in_a_batch_is_charged_and_its_mates_are_not(
    ops_cluster: LocalCluster, table: tuple[Path, np.ndarray]
) -> None:
    path, _ = table
    with ops_cluster.client() as client:
        job, result = _poison_job(client, path, 1, {"raise_row": ROWS // 2 + 5})
        assert result["missing_shards"] == [SHARDS // 2]
        info = job.status(shards=True)
        assert info.shards is not None
        failed = info.shards[SHARDS // 2]
        assert [a.outcome for a in failed.history] == ["error"]
        err = failed.history[0].error
        assert err is not None and "is poison" in err.message
        others = [s for s in info.shards if s.index != SHARDS // 2]
        assert all(s.merged == 1 for s in others)
        mates = {(s.index, a.outcome) for s in others for a in s.history}
        assert {outcome for _, outcome in mates} <= NOT_ITS_FAULT, sorted(mates)
