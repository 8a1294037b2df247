"""Checkpoints in a real state dir: what is on disk when, and what a restarted master reads back.

The pure state machine decides; a small driver carries out its commands the way loop.py does,
against a real SQLite state directory. A second master is a second Checkpointer on that dir.
"""

from __future__ import annotations

import gc
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from helpers import wait_until
from inprocess import shard_partials

from shardmill.data.plan import build_plan
from shardmill.errors import StateDirError
from shardmill.master.blobfiles import BLOB_THRESHOLD, BLOBS_DIR
from shardmill.master.brain import events as ev
from shardmill.master.brain.archive import JobSummary
from shardmill.master.brain.state import MasterState
from shardmill.master.brain.transitions import JobState
from shardmill.master.checkpoint import GROUP_COMMIT, Checkpointer
from shardmill.master.jobs import JobData, accept
from shardmill.master.merge import MapMerger
from shardmill.master.records import StoredJob, pack_inputs
from shardmill.master.store import DB_NAME, SCHEMA_VERSION, Store
from shardmill.ops.registry import NO_MODULES
from shardmill.wire.codec import pack_value, to_bytes, unpack_value
from shardmill.wire.protocol import AttemptInfo, ErrorInfo, Submit
from shardmill.wire.spec import JobSpec

WALL = 1_700_000_000.0  # wall-clock time at the injected clock's zero
MAP = JobSpec(op="map", function="m:f", max_attempts=3)


class Master:
    """The checkpointing half of a master: state machine in, Checkpointer out, as loop.py."""

    def __init__(self, state_dir: Path) -> None:
        self.state = MasterState(wall_offset=WALL)
        self.ck = Checkpointer(state_dir)
        self.jobs, restored = self.ck.restore(NO_MODULES)
        for event in [*restored, ev.RestoreDone()]:
            self.state.handle(event, now=0.0)
        self._carry_out(self.state.handle(ev.WorkerReady("w1", slots=100), now=0.0))

    def submit(self, job_id: str, msg: Submit) -> JobData:
        data = accept(msg, [], NO_MODULES)
        self.ck.job_added(job_id, data, spec=msg.spec, submitted_at=WALL)
        self.jobs[job_id] = data
        self._carry_out(self.state.handle(ev.JobAdded(job_id, msg.spec, len(data.descriptors)), 0))
        return data

    def succeed(
        self,
        job_id: str,
        shard: int,
        result: tuple[bytes, list[Any]],
        now: float,
        *,
        worker: str = "w1",
        attempt: int = 1,
    ) -> None:
        done = ev.ShardSucceeded(worker, job_id, shard, attempt=attempt, duration=0.5)
        self._carry_out(self.state.handle(done, now), job_id, result, now)

    def fail(self, job_id: str, shard: int, now: float, *, retryable: bool = False) -> None:
        error = ErrorInfo(kind="error", type="ValueError", message="bad", retryable=retryable)
        self._carry_out(self.state.handle(ev.ShardFailed("w1", job_id, shard, 1, error), now))

    def _carry_out(
        self,
        cmds: list[ev.Command],
        job_id: str = "",
        result: tuple[bytes, list[Any]] = (b"", []),
        now: float = 0.0,
    ) -> None:
        for cmd in cmds:
            if isinstance(cmd, ev.MergeShard):
                data, shard = self.jobs[job_id], self.state.jobs[job_id].shards[cmd.shard]
                data.merger.add(cmd.shard, *result)
                self.ck.shard_merged(job_id, shard, data, result, offset=WALL)
            elif isinstance(cmd, ev.FinalizeJob):
                self.jobs[cmd.job_id].result = self.jobs[cmd.job_id].merger.final(cmd.missing)
                self._end(cmd.job_id, now)
            elif isinstance(cmd, ev.JobEnded):
                self._end(cmd.job_id, now)
            elif isinstance(cmd, ev.StoryChanged) and not self.state.jobs[cmd.job_id].finished:
                shard = self.state.jobs[cmd.job_id].shards[cmd.shard]
                self.ck.unmerged(cmd.job_id, shard, offset=WALL)
            elif isinstance(cmd, ev.AttemptsGiven):
                self.ck.attempts_given(cmd.job_id, cmd.high)
            elif isinstance(cmd, ev.DropDuplicate):
                job = self.state.jobs[cmd.job_id]
                stories = [job.shards[i] for i in cmd.stories]
                self.ck.dropped(cmd.job_id, stories, resent=job.resent, offset=WALL)

    def _end(self, job_id: str, now: float) -> None:
        job, data = self.state.jobs[job_id], self.jobs[job_id]
        self.ck.job_ended(
            job_id,
            job.shards,
            state=str(job.state),
            error=job.error,
            finished_at=now + WALL,
            result=data.result if job.state is JobState.DONE else None,
            offset=WALL,
            map_job=isinstance(data.merger, MapMerger),
            summary=JobSummary.of(job, WALL),
        )


def _map_submit(n: int) -> Submit:
    parts = [pack_value([(i,)]).data for i in range(n)]
    return Submit(spec=MAP, parts=parts, part_counts=[1] * n, part_arrays=[0] * n)


def _square(i: int) -> tuple[bytes, list[Any]]:
    return pack_value([i * i]).data, []


def _rows(state_dir: Path, sql: str) -> list[Any]:
    """What another process would read from the database: committed rows only."""
    db = sqlite3.connect(state_dir / DB_NAME)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _kill(master: Master) -> None:
    """The master dies: what it had not committed never reaches the disk (the Store alone is
    closed, which commits nothing the Checkpointer still holds), and the dir is unlocked."""
    assert master.ck.store is not None
    master.ck.store.close()


def _finished(master: Master, job_id: str) -> tuple[StoredJob, JobData]:
    """A finished job a restarted master holds as its summary, read from the state dir."""
    assert job_id not in master.state.jobs and job_id in master.state.archive
    loaded = master.ck.load_finished(job_id, NO_MODULES)
    assert loaded is not None
    return loaded


def _values(master: Master, job_id: str) -> list[Any]:
    data = master.jobs.get(job_id) or _finished(master, job_id)[1]
    result = data.result
    assert result is not None
    return [unpack_value(p, []) for p in result.parts]


def test_a_short_map_job_ends_as_one_row_and_reads_back_whole(tmp_path: Path) -> None:
    # Given a 5-shard map job that ends before its merges' group commit
    m = Master(tmp_path)
    m.submit("j", _map_submit(5))
    for i in range(5):
        m.succeed("j", i, _square(i), now=0.001 * i)
    expected = [a.info(WALL) for s in m.state.jobs["j"].shards for a in s.history]
    # Then the job is its one row: no shard rows, inputs gone, result and stories in it
    assert _rows(tmp_path, "SELECT COUNT(*) FROM shards") == [(0,)]
    assert _rows(tmp_path, "SELECT state, inputs IS NULL FROM jobs") == [("done", 1)]
    m.ck.close()
    # When a new master reads the state dir
    again = Master(tmp_path)
    # Then it counts the finished job without decoding its summary yet (a week of them
    # need not hold up its first answer), and decodes it when it is asked for
    archive = again.state.archive
    assert len(archive) == 1 and archive._summaries == {}
    assert archive.by_state == {"done": 1} and list(archive._summaries) == ["j"]
    # And the result, every shard's state and every attempt's story are the same
    assert _values(again, "j") == [[i * i] for i in range(5)]
    summary = again.state.archive.get("j")
    assert summary is not None and summary.state == "done" and summary.shards_done == 5
    stored, _ = _finished(again, "j")
    assert all(s.state == "done" for s in stored.shards.values())
    assert [a for _, s in sorted(stored.shards.items()) for a in s.history] == expected
    assert expected[0].worker == "w1" and expected[0].outcome == "ok"
    again.ck.close()


def test_merges_wait_for_their_group_commit_or_a_client(tmp_path: Path) -> None:
    # Given a map job with two merged shards
    m = Master(tmp_path)
    m.submit("j", _map_submit(4))
    before = time.monotonic()
    m.succeed("j", 0, _square(0), now=0.0)
    m.succeed("j", 1, _square(1), now=0.0)
    # Then nothing of them is on disk yet, and the loop knows when to commit them
    deadline = m.ck.flush_deadline()
    assert deadline is not None and before + GROUP_COMMIT <= deadline
    assert deadline <= time.monotonic() + GROUP_COMMIT
    m.ck.commit(deadline - 0.001)
    assert _rows(tmp_path, "SELECT COUNT(*) FROM shards") == [(0,)]
    # When their group commit is due (or a client is about to be answered: commit())
    m.ck.commit(deadline)
    # Then both shards are on disk, with their results, in one commit
    assert _rows(tmp_path, "SELECT shard, state FROM shards ORDER BY shard") == [
        (0, "done"),
        (1, "done"),
    ]
    assert m.ck.flush_deadline() is None
    m.ck.close()


def _map_job(tmp_path: Path, *, committed: list[int], then: list[int]) -> Master:
    """A 4-shard map job: the `committed` shards merged and committed, then `then` merged."""
    m = Master(tmp_path)
    m.submit("j", _map_submit(4))
    for i in committed:
        m.succeed("j", i, _square(i), now=0.0)
    m.ck.commit()
    for i in then:
        m.succeed("j", i, _square(i), now=0.0)
    return m


def test_a_map_job_keeps_results_it_committed_in_shard_rows(tmp_path: Path) -> None:
    # Given a map job whose first merges were committed before it ended
    m = _map_job(tmp_path, committed=[0], then=[1, 2, 3])
    # Then its results stay in its shard rows, written once, and its row holds no copy
    assert _rows(tmp_path, "SELECT COUNT(*) FROM shards WHERE result IS NOT NULL") == [(4,)]
    assert _rows(tmp_path, "SELECT result IS NULL, settled IS NOT NULL FROM jobs") == [(1, 1)]
    m.ck.close()
    # And a new master reads the same result back
    again = Master(tmp_path)
    assert _values(again, "j") == [[i * i] for i in range(4)]
    again.ck.close()


def test_an_unfinished_map_job_resumes_with_the_merges_committed(tmp_path: Path) -> None:
    # Given a map job with shard 1 merged and committed, and shard 2 merged but not committed
    m = _map_job(tmp_path, committed=[1], then=[2])
    _kill(m)
    # When a new master reads the state dir
    again = Master(tmp_path)
    # Then shard 1 stays merged, the rest run again from their stored inputs
    states = [str(s.state) for s in again.state.jobs["j"].shards]
    assert states == ["queued", "done", "queued", "queued"]
    data = again.jobs["j"]
    assert [unpack_value(p, list(a)) for p, a in data.inputs] == [[[i]] for i in range(4)]
    assert [d.model_dump() for d in data.descriptors] == [
        {"kind": "map", "function": "m:f", "count": 1}
    ] * 4
    # And it finishes with every result
    for i in (0, 2, 3):
        again.succeed("j", i, _square(i), now=1.0)
    assert _values(again, "j") == [[i * i] for i in range(4)]
    again.ck.close()


def test_an_op_job_resumes_from_its_partial(tmp_path: Path) -> None:
    # Given a sum_count job over 4 row shards, two merged and committed, one not committed
    data = np.arange(40.0).reshape(20, 2)
    np.save(tmp_path / "d.npy", data)
    spec = JobSpec(op="sum_count", dataset=str(tmp_path / "d.npy"), shards=4)
    partials = [pack_value(p) for p in shard_partials(build_plan(spec))]

    def part(i: int) -> tuple[bytes, list[Any]]:
        return partials[i].data, [to_bytes(a) for a in partials[i].arrays]

    m = Master(tmp_path / "state")
    m.submit("j", Submit(spec=spec))
    m.succeed("j", 2, part(2), now=0.0)
    m.succeed("j", 0, part(0), now=0.0)
    m.ck.commit()
    m.succeed("j", 3, part(3), now=0.0)
    _kill(m)
    # When a new master resumes it and the other two shards run again
    again = Master(tmp_path / "state")
    states = [str(s.state) for s in again.state.jobs["j"].shards]
    assert states == ["done", "queued", "done", "queued"]
    for i in (1, 3):
        again.succeed("j", i, part(i), now=1.0)
    # Then the result is the whole data's, each shard merged once
    final = again.jobs["j"].result
    assert final is not None
    value = unpack_value(final.parts[0], final.arrays)
    np.testing.assert_allclose(value["sum"], data.sum(axis=0))
    np.testing.assert_array_equal(value["count"], [20, 20])
    assert value["shards_merged"] == 4
    assert _rows(tmp_path / "state", "SELECT COUNT(*) FROM partials") == [(0,)]
    again.ck.close()


def test_duplicates_resent_copies_and_attempt_numbers_outlive_a_restart(tmp_path: Path) -> None:
    # Given a map job of 2 shards, both leased (attempt 1, committed before it went out)
    m = Master(tmp_path)
    m.submit("j", _map_submit(2))
    assert _rows(tmp_path, "SELECT attempts FROM jobs") == [(1,)]
    # And shard 0 merged, a second execution's result for it (written after its row), and a
    # copy of each result, resent
    m.succeed("j", 0, _square(0), now=1.0)
    m.ck.commit()
    m.succeed("j", 0, _square(0), now=2.0, worker="w2", attempt=2)
    m.succeed("j", 0, _square(0), now=2.5, worker="w2", attempt=2)
    m.succeed("j", 0, _square(0), now=3.0)
    m.ck.commit()
    info = m.state.job_info("j")
    assert (info.duplicates, info.resent) == (1, 2)
    # When the master dies and another starts on the state dir
    _kill(m)
    m = Master(tmp_path)
    # Then the story keeps the second execution, the counts are as they were, and shard 1
    # runs again as attempt 2: attempt 1 may still run, and report, under its own number
    after = m.state.hold_until  # when a restarted master gives out work
    m._carry_out(m.state.handle_all([ev.WorkerSeen("w1"), ev.Tick()], now=after))
    job = m.state.jobs["j"]
    assert [(a.number, a.worker, a.outcome) for a in job.shards[0].history] == [
        (1, "w1", "ok"), (2, "w2", "duplicate"),
    ]  # fmt: skip
    assert (m.state.job_info("j").duplicates, m.state.job_info("j").resent) == (1, 2)
    assert [a.number for a in job.shards[1].history] == [2]
    assert _rows(tmp_path, "SELECT attempts FROM jobs") == [(2,)]
    m.succeed("j", 1, _square(1), now=after + 0.1, attempt=2)
    assert _values(m, "j") == [[0], [1]]
    m.ck.close()


def test_a_failed_attempt_of_a_shard_not_merged_outlives_a_restart(tmp_path: Path) -> None:
    # Given a map job whose shard 1 failed once (it waits to run again) and shard 0 merged
    m = Master(tmp_path)
    m.submit("j", _map_submit(2))
    m.fail("j", 1, now=1.0, retryable=True)
    m.succeed("j", 0, _square(0), now=1.5)
    m.ck.commit()
    # When the master dies and another starts on the state dir
    _kill(m)
    m = Master(tmp_path)
    after = m.state.hold_until
    m._carry_out(m.state.handle_all([ev.WorkerSeen("w1"), ev.Tick()], now=after))
    # Then shard 1 runs again with its failed attempt still in its story, as attempt 3 (its
    # retry, attempt 2, went out before the kill: it may yet report under its own number)
    shard = m.state.jobs["j"].shards[1]
    assert [(a.number, a.outcome) for a in shard.history] == [(1, "error"), (3, "running")]
    assert shard.history[0].error is not None and shard.history[0].error.type == "ValueError"
    # And once it is merged, the job ends with its result and that story, and no stale row
    m.succeed("j", 1, _square(1), now=after + 0.1, attempt=3)
    assert _values(m, "j") == [[0], [1]]
    m.ck.close()
    stored = Master(tmp_path).ck.load_finished("j", NO_MODULES)
    assert stored is not None
    assert [a.outcome for a in stored[0].shards[1].history] == ["error", "ok"]


def test_a_failed_job_keeps_every_shards_story(tmp_path: Path) -> None:
    # Given a map job whose shard 1 fails for good after shard 0 merged
    m = Master(tmp_path)
    m.submit("j", _map_submit(3))
    m.succeed("j", 0, _square(0), now=0.0)
    m.fail("j", 1, now=0.5)
    assert m.state.jobs["j"].state is JobState.FAILED
    m.ck.close()
    # When a new master reads it back
    again = Master(tmp_path)
    summary, (stored, _) = again.state.archive.get("j"), _finished(again, "j")
    # Then the job failed with its error, and the failed attempt's error is kept
    assert summary is not None and summary.state == "failed"
    assert summary.error == stored.error == m.state.jobs["j"].error
    assert summary.missing_shards == (1,)
    assert stored.shards[0].state == "done" and stored.shards[1].state == "failed"
    error = stored.shards[1].history[0].error
    assert error is not None and error.type == "ValueError" and not error.retryable
    assert _rows(tmp_path, "SELECT COUNT(*) FROM shards") == [(0,)]
    # And it is listed (`jobs`, as plain data) as its info reads
    assert summary.last_failure and summary.attempts_failed == 1
    assert summary.listed() == summary.info().model_dump(mode="python")
    again.ck.close()


def test_a_version_1_state_dir_is_migrated_and_resumed(tmp_path: Path) -> None:
    # Given a state dir written by a version-1 master: one row per shard input
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript(V1_SCHEMA)
    descs = '[{"kind":"map","function":"m:f","count":1},{"kind":"map","function":"m:f","count":1}]'
    db.execute(
        "INSERT INTO jobs VALUES ('j', 1, ?, ?, '[1, 1]', ?, 'running', NULL, NULL, NULL)",
        (MAP.model_dump_json(), descs, WALL),
    )
    for i in range(2):
        blob = msgpack.packb([pack_value([(i,)]).data, []])
        db.execute("INSERT INTO inputs VALUES ('j', ?, ?)", (i, blob))
    history = [AttemptInfo(attempt=1, worker="w9", started=WALL, ended=WALL + 1, outcome="ok")]
    hist = "[" + ",".join(a.model_dump_json() for a in history) + "]"
    db.execute("INSERT INTO shards VALUES ('j', 0, 'done', ?, ?)", (hist, _v1_blob(0)))
    db.commit()
    db.close()
    # When this master opens it
    m = Master(tmp_path)
    # Then it is on the current version, and the job resumes where it was
    assert _rows(tmp_path, "SELECT value FROM meta WHERE key = 'version'") == [
        (str(SCHEMA_VERSION),)
    ]
    data = m.jobs["j"]
    assert [unpack_value(p, list(a)) for p, a in data.inputs] == [[[0]], [[1]]]
    assert [str(s.state) for s in m.state.jobs["j"].shards] == ["done", "queued"]
    assert m.state.jobs["j"].shards[0].history[0].worker == "w9"
    m.succeed("j", 1, _square(1), now=1.0)
    assert _values(m, "j") == [[0], [1]]
    m.ck.close()


def test_a_version_4_state_dir_gets_summaries_with_started_at_and_restarts(
    tmp_path: Path,
) -> None:
    # Given a version-4 state dir: a job that ran through a master start and finished
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript(V4_SCHEMA)
    starts = json.dumps([WALL - 5, WALL + 3, WALL + 20])
    db.execute("INSERT INTO meta VALUES ('starts', ?)", (starts,))
    attempt = [1, "w1", WALL + 1, WALL + 9, "ok", None, 8.0, False, ""]
    settled = msgpack.packb([[0, "done", [attempt]]])
    db.execute(
        "INSERT INTO jobs VALUES ('f', 1, ?, '[]', '[1]', ?, 'done', NULL, ?, NULL, NULL, ?, ?)",
        (MAP.model_dump_json(), WALL, WALL + 10, settled, WALL + 0.5),
    )
    db.commit()
    db.close()
    # When this master opens it
    m = Master(tmp_path)
    # Then the finished job is its summary, with its persisted start and the restart it ran
    # through (not the starts before or after it)
    assert "f" not in m.state.jobs
    summary = m.state.archive.get("f")
    assert summary is not None and summary.state == "done" and summary.shards_done == 1
    assert summary.started_at == WALL + 0.5 and summary.restarts == (WALL + 3,)
    assert m.state.job_info("f").restarts == [WALL + 3]
    assert gc.isenabled()  # off only while the summaries were read
    assert summary.listed() == summary.info().model_dump(mode="python")
    m.ck.close()


def test_a_start_finds_unfinished_jobs_without_reading_the_finished_ones(
    tmp_path: Path,
) -> None:
    # Given a state dir of finished jobs around two unfinished ones, written before the
    # indexes existed
    store = Store(tmp_path)
    for i in range(6):
        store.add_job(f"j{i}", MAP, [], [1], WALL + i, [])
        if i not in (1, 4):
            store.job_ended(
                f"j{i}",
                state="done",
                error=None,
                finished_at=WALL + 9,
                result=None,
                settled=msgpack.packb([]),
            )
    store.commit()
    store.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript("DROP INDEX jobs_seq; DROP INDEX jobs_state;")
    db.close()
    # When a store opens it
    again = Store(tmp_path)
    # Then the unfinished jobs and the highest seq are looked up in indexes, not a table scan
    plan = "EXPLAIN QUERY PLAN SELECT job_id FROM jobs WHERE state = 'running' ORDER BY seq"
    assert "USING INDEX jobs_state (state=?)" in str(again.db.execute(plan).fetchall())
    plan = "EXPLAIN QUERY PLAN SELECT MAX(seq) FROM jobs"
    assert "INDEX jobs_seq" in str(again.db.execute(plan).fetchall())
    # And what they find is what a scan finds: the unfinished jobs oldest first, new ones after
    assert [job.job_id for job in again.load()] == ["j1", "j4"]
    again.add_job("j6", MAP, [], [1], WALL + 6, [])
    assert [job.job_id for job in again.load()] == ["j1", "j4", "j6"]
    again.close()


def test_the_wal_is_copied_back_off_the_loops_thread(tmp_path: Path) -> None:
    # Given a store (SQLite's own checkpoint, inside some commit, is off)
    store = Store(tmp_path, wal_interval=0.05)
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    # When it commits jobs with 100 kB of inputs
    for i in range(10):
        store.add_job(f"j{i}", MAP, [], [1], WALL, [(bytes(10_000), [])])
        store.commit()
    # Then they reach the database file itself, copied from the WAL by the store's own thread
    db_file = tmp_path / DB_NAME
    wait_until(lambda: db_file.stat().st_size > 100_000, what="a WAL checkpoint")
    store.close()


def _files(state_dir: Path) -> set[str]:
    return {p.name for p in (state_dir / BLOBS_DIR).iterdir()}


def _stored(store: Store) -> dict[str, Any]:
    """Every job, unfinished (what a restart reads) or finished (read when asked)."""
    ids = [row[0] for row in store.db.execute("SELECT job_id FROM jobs")]
    return {job_id: store.load_job(job_id) for job_id in ids}


def test_big_blobs_are_files_and_read_back_the_same(tmp_path: Path) -> None:
    # Given a store that keeps blobs over 1000 bytes in files
    store = Store(tmp_path, blob_threshold=1000)
    big_in, small_in = [(os.urandom(3000), [os.urandom(500)])], [(b"small", [])]
    big_partial = os.urandom(2000)
    # When a job with big inputs and partial and one with small ones are committed
    store.add_job("big", MAP, [], [1], WALL, big_in)
    store.save_partial("big", big_partial, 1)
    store.add_job("small", MAP, [], [1], WALL, small_in)
    store.save_partial("small", b"tiny", 1)
    store.commit()
    store.close()
    # Then the big blobs are two files, their cells TEXT references, the small ones inline
    assert len(_files(tmp_path)) == 2
    assert _rows(tmp_path, "SELECT job_id, typeof(inputs) FROM jobs ORDER BY seq") == [
        ("big", "text"),
        ("small", "blob"),
    ]
    assert _rows(tmp_path, "SELECT job_id, typeof(blob) FROM partials ORDER BY job_id") == [
        ("big", "text"),
        ("small", "blob"),
    ]
    # And a reopened store reads every blob back identical
    again = Store(tmp_path, blob_threshold=1000)
    jobs = _stored(again)
    assert jobs["big"].inputs == pack_inputs(big_in) and jobs["big"].partial == big_partial
    assert jobs["small"].inputs == pack_inputs(small_in) and jobs["small"].partial == b"tiny"
    assert len(_files(tmp_path)) == 2
    again.close()


def test_a_replaced_blob_file_is_deleted_only_after_the_commit(tmp_path: Path) -> None:
    # Given a job whose big partial is committed as a file
    store = Store(tmp_path, blob_threshold=1000)
    store.add_job("j", MAP, [], [1], WALL, [])
    store.save_partial("j", bytes(2000), 1)
    store.commit()
    (old,) = _files(tmp_path)
    # When a newer partial replaces it
    store.save_partial("j", bytes(3000), 2)
    # Then the old file stays until the commit that stops referencing it, then goes
    assert old in _files(tmp_path) and len(_files(tmp_path)) == 2
    store.commit()
    (new,) = _files(tmp_path)
    assert new != old
    store.close()


def test_blob_files_no_committed_row_references_are_deleted_at_open(tmp_path: Path) -> None:
    # Given a committed big blob, and files a crash left behind: one never committed, one
    # half-written
    store = Store(tmp_path, blob_threshold=1000)
    store.add_job("j", MAP, [], [1], WALL, [(bytes(2000), [])])
    store.commit()
    store.close()
    (kept,) = _files(tmp_path)
    (tmp_path / BLOBS_DIR / ("ab" * 16)).write_bytes(bytes(5000))
    (tmp_path / BLOBS_DIR / ("cd" * 16 + ".tmp")).write_bytes(bytes(10))
    # When a store opens the dir
    again = Store(tmp_path, blob_threshold=1000)
    # Then only the referenced file is left, and it reads back
    assert _files(tmp_path) == {kept}
    assert _stored(again)["j"].inputs == pack_inputs([(bytes(2000), [])])
    again.close()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_truncated_blob_file_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    # Given a committed job whose inputs file then goes missing or loses bytes
    store = Store(tmp_path, blob_threshold=1000)
    store.add_job("j", MAP, [], [1], WALL, [(bytes(2000), [])])
    store.commit()
    store.close()
    (name,) = _files(tmp_path)
    path = tmp_path / BLOBS_DIR / name
    if damage == "missing":
        path.unlink()
    else:
        os.truncate(path, 100)
    # When a store reads the job back
    again = Store(tmp_path, blob_threshold=1000)
    # Then it is a StateDirError naming the job, the file and the fix, not empty inputs
    with pytest.raises(StateDirError) as caught:
        _stored(again)
    message = str(caught.value)
    assert "job j's inputs" in message and str(path) in message and "backup" in message
    told = {"missing": "which is missing", "truncated": "truncated or changed"}[damage]
    assert f"{path}, {told}" in message or f"{path}, which holds 100 bytes" in message
    again.close()


def test_an_ended_then_forgotten_job_leaves_no_blob_files(tmp_path: Path) -> None:
    # Given a running job with big inputs, a big merged shard result and a big partial
    store = Store(tmp_path, blob_threshold=1000)
    store.add_job("j", MAP, [], [1, 1], WALL, [(bytes(2000), []), (bytes(2000), [])])
    store.shards_settled([("j", 0, "done", "[]", bytes(1500))])
    store.save_partial("j", bytes(1200), 1)
    store.commit()
    assert len(_files(tmp_path)) == 3
    # When it ends with a big result: its inputs, shard rows and partial go
    store.job_ended(
        "j",
        state="done",
        error=None,
        finished_at=WALL,
        result=bytes(4000),
        settled=msgpack.packb([]),
    )
    store.commit()
    # Then only its result's file is left, and it reads back
    assert len(_files(tmp_path)) == 1
    assert _stored(store)["j"].result == bytes(4000)
    # And when it is forgotten, no file is left
    store.delete_jobs(["j"])
    store.commit()
    assert _files(tmp_path) == set()
    store.close()


def test_a_blob_file_the_disk_refuses_stops_the_store(tmp_path: Path) -> None:
    # Given a store whose blob directory became a plain file (no file can be made in it)
    store = Store(tmp_path, blob_threshold=1000)
    blobs = tmp_path / BLOBS_DIR
    blobs.rename(tmp_path / "moved")
    blobs.write_bytes(b"")
    # When a job with big inputs is added
    with pytest.raises(StateDirError) as caught:
        store.add_job("j", MAP, [], [1], WALL, [(bytes(2000), [])])
    # Then the error names the state dir and the fix, and every later write fails with it
    assert str(tmp_path) in str(caught.value) and "start the master again" in str(caught.value)
    assert store.failure is caught.value
    with pytest.raises(StateDirError):
        store.commit()
    store.close()
    # And the committed state has no trace of the job
    assert _rows(tmp_path, "SELECT COUNT(*) FROM jobs") == [(0,)]


def test_a_master_resumes_a_job_whose_inputs_are_a_file(tmp_path: Path) -> None:
    # Given a map job whose inputs are bigger than the default threshold, killed unfinished
    big = pack_value([(b"x" * BLOB_THRESHOLD,)]).data
    msg = Submit(spec=MAP, parts=[big, pack_value([(1,)]).data], part_counts=[1, 1])
    m = Master(tmp_path)
    m.submit("j", msg.model_copy(update={"part_arrays": [0, 0]}))
    assert len(_files(tmp_path)) == 1
    _kill(m)
    # When a new master resumes it and both shards succeed
    again = Master(tmp_path)
    assert [p for p, _ in again.jobs["j"].inputs] == [big, pack_value([(1,)]).data]
    for i in range(2):
        again.succeed("j", i, _square(i), now=1.0)
    # Then it is done and its inputs' file is gone
    assert _values(again, "j") == [[0], [1]]
    assert _files(tmp_path) == set()
    again.ck.close()


def _v1_blob(i: int) -> bytes:
    return bytes(msgpack.packb([pack_value([i * i]).data, []]))


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('format', 'shardmill-state'), ('version', '1');
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, spec TEXT NOT NULL, descriptors TEXT NOT NULL,
    part_counts TEXT NOT NULL, submitted_at REAL NOT NULL, state TEXT NOT NULL,
    error TEXT, finished_at REAL, result BLOB);
CREATE TABLE inputs (job_id TEXT, shard INTEGER, blob BLOB NOT NULL, PRIMARY KEY (job_id, shard));
CREATE TABLE shards (
    job_id TEXT, shard INTEGER, state TEXT NOT NULL, history TEXT NOT NULL, result BLOB,
    PRIMARY KEY (job_id, shard));
CREATE TABLE partials (job_id TEXT PRIMARY KEY, blob BLOB NOT NULL, merged INTEGER NOT NULL);
"""

V4_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('format', 'shardmill-state'), ('version', '4');
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, spec TEXT NOT NULL, descriptors TEXT NOT NULL,
    part_counts TEXT NOT NULL, submitted_at REAL NOT NULL, state TEXT NOT NULL,
    error TEXT, finished_at REAL, result BLOB, inputs BLOB, settled BLOB, started_at REAL);
CREATE TABLE shards (
    job_id TEXT, shard INTEGER, state TEXT NOT NULL, history TEXT NOT NULL, result BLOB,
    PRIMARY KEY (job_id, shard));
CREATE TABLE partials (job_id TEXT PRIMARY KEY, blob BLOB NOT NULL, merged INTEGER NOT NULL);
"""
