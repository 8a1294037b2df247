"""Checkpoints in the state directory: SQLite (WAL) for jobs, shards, partials and results.

A running job is its row (spec, descriptors, inputs), a row per merged shard and, for an op, its
partial; a shard's row and the partial it was merged into are written in one transaction, so
"merged" on disk means merged. A finished job is its one row: state, result and every shard's
story (a map job whose results are in its shard rows already keeps those). What is written is
committed in groups (see Checkpointer), always before a client hears of it.

A blob larger than the store's `blob_threshold` (1 MiB) is a file in `<state dir>/blobs/`
instead (see BlobFiles): written under a temporary name, fsynced, renamed, the directory fsynced,
and only then referenced from its cell. The reference is the TEXT value "file:<name>:<size>":
an inline blob is always stored as a BLOB, so SQLite's storage class alone tells the two apart
(sqlite3 reads one back as bytes, the other as str). Each file belongs to one cell; a file its
cell no longer references is deleted only after the commit that dropped it, and a file no
committed cell references (written before a crash, or whose deletion a crash cut short) is
deleted when the store opens.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from shardmill.errors import StateDirError
from shardmill.master.blobfiles import BLOB_THRESHOLD, BLOBS_DIR, BlobFiles, ShardRow
from shardmill.master.diskerrors import disk_facts, error_name
from shardmill.master.migrate import migrate
from shardmill.master.records import StoredJob, StoredShard, pack_inputs, unpack_settled
from shardmill.master.standby.recording import RecordingConnection as Recording
from shardmill.master.walcheckpoint import WAL_INTERVAL, WalCheckpointer
from shardmill.wire.codec import Buffer
from shardmill.wire.protocol import AttemptInfo
from shardmill.wire.spec import Descriptor, JobSpec

log = logging.getLogger(__name__)

FORMAT = "shardmill-state"
# What each version added: master/migrate.py, a step per version (a docstring each).
SCHEMA_VERSION = 6
DB_NAME = "shardmill.db"
LOCK_NAME = "master.lock"

_DESCRIPTORS: TypeAdapter[list[Descriptor]] = TypeAdapter(list[Descriptor])
_HISTORY: TypeAdapter[list[AttemptInfo]] = TypeAdapter(list[AttemptInfo])

_SET_STORY = "UPDATE shards SET history = ? WHERE job_id = ? AND shard = ?"
_SELECT_JOB = (
    "SELECT job_id, spec, descriptors, part_counts, submitted_at, state, error, "
    "finished_at, result, inputs, settled, started_at, attempts, resent FROM jobs "
)

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, spec TEXT NOT NULL, descriptors TEXT NOT NULL,
    part_counts TEXT NOT NULL, submitted_at REAL NOT NULL, state TEXT NOT NULL,
    error TEXT, finished_at REAL, result BLOB, inputs BLOB, settled BLOB, started_at REAL,
    attempts INTEGER, resent INTEGER);
CREATE TABLE shards (
    job_id TEXT, shard INTEGER, state TEXT NOT NULL, history TEXT NOT NULL, result BLOB,
    PRIMARY KEY (job_id, shard));
CREATE TABLE partials (job_id TEXT PRIMARY KEY, blob BLOB NOT NULL, merged INTEGER NOT NULL);
CREATE TABLE summaries (job_id TEXT PRIMARY KEY, summary BLOB NOT NULL);
"""
# A start's lookups among a week of finished jobs (the highest seq, the unfinished jobs in
# order) without reading them all; made by the first start that lacks them (one pass).
INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs (seq);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""


class Store:
    """One master's checkpoint database; holds an exclusive lock on the directory."""

    def __init__(
        self,
        state_dir: Path,
        *,
        wal_interval: float = WAL_INTERVAL,
        blob_threshold: int = BLOB_THRESHOLD,
    ) -> None:
        self.dir = state_dir
        self.on_commit: Callable[[float], None] | None = None  # seconds per commit (metrics)
        try:
            # Partial results are the users' data: this user's only (its files are 0600), and
            # an older, wider directory is narrowed.
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if state_dir.stat().st_mode & 0o077:
                state_dir.chmod(0o700)
        except OSError as e:
            raise StateDirError(f"state dir {state_dir} cannot be created: {e}") from e
        self._lock_fd = self._lock()
        self.path = state_dir / DB_NAME
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self.db = self._open(fresh)
        self.blobs = BlobFiles.open(state_dir / BLOBS_DIR, blob_threshold, self.db)
        self._seq = self._max_seq()
        self._wal = WalCheckpointer(self.path, wal_interval)
        # Fault injection for the crash tests: die inside the Nth commit, its writes in flight.
        self._crash_in_commit = int(os.environ.get("SHARDMILL_FAULT_CRASH_IN_COMMIT", "0"))
        self._commits = 0
        # The first write the disk refused. From then on every write raises it again: SQLite may
        # have rolled back part or all of the open transaction, so committing anything after it
        # could make a state no master ever held durable. The master stops (crash-only).
        self.failure: StateDirError | None = None

    # ---- opening -------------------------------------------------------------------------------

    def _lock(self) -> int:
        path = self.dir / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StateDirError(f"state dir {self.dir} is not writable: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StateDirError(
                f"state dir {self.dir} is in use by {holder}; stop that master first, or give "
                "this one another --state-dir (one master per state directory)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"master pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        return fd

    def _open(self, fresh: bool) -> sqlite3.Connection:
        try:
            # Partial results are the users' data: 0600, and SQLite gives its -wal and -shm
            # files the database's own mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(self.path, 0o600)
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, factory=Recording
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")  # WalCheckpointer does it, off this thread
            if fresh:
                db.executescript("BEGIN;" + SCHEMA + INDEXES + "COMMIT;")
                db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("format", FORMAT), ("version", str(SCHEMA_VERSION))],
                )
            else:
                self._check(db)
                db.executescript("BEGIN;" + INDEXES + "COMMIT;")
        except sqlite3.DatabaseError as e:
            raise StateDirError(
                f"{self.path} is not a readable shardmill state database ({e}); it was left "
                "untouched: restore it from a backup, or move it away to start empty"
            ) from e
        db.execute("BEGIN")
        return db

    def _check(self, db: sqlite3.Connection) -> None:
        status = db.execute("PRAGMA quick_check").fetchone()[0]
        if status != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {status}")
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError:
            meta = {}
        if meta.get("format") != FORMAT:
            raise StateDirError(
                f"{self.path} is not a shardmill state database (no shardmill metadata); "
                "refusing to overwrite it: give the master an empty or shardmill --state-dir"
            )
        version = int(meta.get("version", "0"))
        if version > SCHEMA_VERSION:
            raise StateDirError(
                f"{self.path} was written by a newer shardmill (state version {version}, this "
                f"master understands {SCHEMA_VERSION}); upgrade this master"
            )
        if version < SCHEMA_VERSION:
            migrate(db, version, SCHEMA_VERSION)

    def _max_seq(self) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()
        return int(row[0])

    # ---- writing (inside the open transaction) -------------------------------------------------

    def add_job(
        self,
        job_id: str,
        spec: JobSpec,
        descriptors: Sequence[Descriptor],
        part_counts: Sequence[int],
        submitted_at: float,
        inputs: Sequence[tuple[bytes, Sequence[Buffer]]],
    ) -> None:
        with self._writing():
            row = (
                job_id,
                self._seq + 1,
                spec.model_dump_json(),
                _DESCRIPTORS.dump_json(list(descriptors)).decode(),
                json.dumps(list(part_counts)),
                submitted_at,
                self.blobs.put(job_id, ("inputs", -1), pack_inputs(inputs)),
            )
            self.db.execute(
                "INSERT INTO jobs VALUES "
                "(?, ?, ?, ?, ?, ?, 'running', NULL, NULL, NULL, ?, NULL, NULL, NULL, NULL)",
                row,
            )
        self._seq += 1

    def job_started(self, job_id: str, started_at: float) -> None:
        with self._writing():
            self.db.execute("UPDATE jobs SET started_at = ? WHERE job_id = ?", (started_at, job_id))

    def attempts_given(self, job_id: str, high: int) -> None:
        with self._writing():
            self.db.execute("UPDATE jobs SET attempts = ? WHERE job_id = ?", (high, job_id))

    def dropped(self, job_id: str, stories: Sequence[tuple[str, str, int]], *, resent: int) -> None:
        """Merged shards' stories (history as JSON, job_id, shard) that gained an attempt, and
        the job's count of resent results. A row not written yet is written later, whole."""
        with self._writing():
            self.db.executemany(_SET_STORY, stories)
            self.db.execute("UPDATE jobs SET resent = ? WHERE job_id = ?", (resent, job_id))

    def master_started(self, at: float) -> list[float]:
        """Note a master's start on this state dir (committed); every start so far, oldest
        first: a job's story shows the restarts that happened while it ran."""
        with self._writing():
            row = self.db.execute("SELECT value FROM meta WHERE key = 'starts'").fetchone()
            starts = [*json.loads(row[0] if row else "[]"), at][-1000:]
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('starts', ?)", (_json(starts),))
        self.commit()
        return starts

    def shards_settled(self, rows: Sequence[ShardRow]) -> None:
        """Shard rows: (job_id, shard, state, history as JSON, result blob or None)."""
        with self._writing():
            cells = [self.blobs.shard_row(row) for row in rows]
            self.db.executemany("INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?, ?)", cells)

    def save_partial(self, job_id: str, blob: bytes, merged: int) -> None:
        with self._writing():
            cell = self.blobs.put(job_id, ("partial", -1), blob)
            self.db.execute(
                "INSERT OR REPLACE INTO partials VALUES (?, ?, ?)", (job_id, cell, merged)
            )

    def job_ended(
        self,
        job_id: str,
        *,
        state: str,
        error: str | None,
        finished_at: float,
        result: bytes | None,
        settled: bytes,
        keep_shard_rows: bool = False,
        summary: bytes | None = None,
    ) -> None:
        """A finished job: its state, result and `settled` in its one row. Its inputs and
        partial go, and its shard rows too unless they hold its (map) result.

        `settled` is every shard's state and story, msgpack: [[index, state, [[attempt, worker,
        started, ended, outcome, error as a dict or None], ...]], ...]."""
        with self._writing():
            cells = (
                self.blobs.put(job_id, ("result", -1), result),
                self.blobs.put(job_id, ("settled", -1), settled),
            )
            gone = ("inputs", "partial") if keep_shard_rows else ("inputs", "partial", "shard")
            self.blobs.drop(job_id, gone)
            self.db.execute(
                "UPDATE jobs SET state = ?, error = ?, finished_at = ?, result = ?, "
                "inputs = NULL, settled = ? WHERE job_id = ?",
                (state, error, finished_at, cells[0], cells[1], job_id),
            )
            kept = " AND state != 'done'" if keep_shard_rows else ""  # stories are in `settled`
            self.db.execute("DELETE FROM shards WHERE job_id = ?" + kept, (job_id,))
            self.db.execute("DELETE FROM partials WHERE job_id = ?", (job_id,))
            if summary is not None:  # what a restart reads of it
                self.db.execute("INSERT OR REPLACE INTO summaries VALUES (?, ?)", (job_id, summary))

    def delete_jobs(self, job_ids: Sequence[str]) -> None:
        with self._writing():
            for job_id in job_ids:
                self.blobs.drop(job_id)
            for table in ("jobs", "shards", "partials", "summaries"):
                rows = [(j,) for j in job_ids]
                self.db.executemany(f"DELETE FROM {table} WHERE job_id = ?", rows)

    def commit(self) -> None:
        """Make everything written so far durable; raises StateDirError when the disk refuses."""
        self._commits += 1
        if self._commits == self._crash_in_commit:
            log.critical("fault injection: dying inside commit %d", self._commits)
            os._exit(70)
        started = time.perf_counter()
        with self._writing():
            self.db.execute("COMMIT")
            self.db.execute("BEGIN")
        self.blobs.committed()
        self._wal.poke()
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Every write: SQLite's error becomes a StateDirError that names the dir and the fix,
        and the first one is final (see `failure`)."""
        if self.failure is not None:
            raise self.failure
        try:
            yield
        except (sqlite3.Error, OSError) as e:  # OSError: a blob file's
            name = error_name(e)
            self.failure = StateDirError(
                f"cannot write the checkpoint in {self.dir}: {e}"
                f"{f' ({name})' if name else ''}{disk_facts(self.dir)}; free space or make it "
                "writable, then start the master again: it resumes every job from the last commit"
            )
            raise self.failure from e

    # ---- reading -------------------------------------------------------------------------------

    def load(self) -> Iterator[StoredJob]:
        """Every unfinished job, oldest first, with what is needed to resume it (finished ones
        are summaries: `summaries`, and `load_job` when someone asks)."""
        rows = self.db.execute(_SELECT_JOB + "WHERE state = 'running' ORDER BY seq").fetchall()
        for row in rows:
            yield self._stored(row)

    def summaries(self) -> list[bytes]:
        """Every finished job's packed summary (archive.JobSummary.pack, msgpack)."""
        return [row[0] for row in self.db.execute("SELECT summary FROM summaries")]

    def load_job(self, job_id: str) -> StoredJob | None:
        """One job, finished or not, as `load` reads it: its stories, result and partial."""
        row = self.db.execute(_SELECT_JOB + "WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else self._stored(row)

    def _stored(self, row: tuple[Any, ...]) -> StoredJob:
        read = self.blobs.read
        job = StoredJob(
            job_id=row[0],
            spec=JobSpec.model_validate_json(row[1]),
            descriptors=_DESCRIPTORS.validate_json(row[2]),
            part_counts=json.loads(row[3]),
            submitted_at=row[4],
            state=row[5],
            error=row[6],
            finished_at=row[7],
            result=read(row[8], f"job {row[0]}'s result"),
            inputs=read(row[9], f"job {row[0]}'s inputs"),
            started_at=row[11],
            attempts_given=row[12] or 0,
            resent=row[13] or 0,
        )
        settled = read(row[10], f"job {row[0]}'s shard stories")
        if settled is not None:
            job.shards = unpack_settled(settled)
        for shard, st, hist, result in self.db.execute(
            "SELECT shard, state, history, result FROM shards WHERE job_id = ?", (job.job_id,)
        ):
            blob = read(result, f"job {job.job_id}'s shard {shard} result")
            job.shards[shard] = StoredShard(st, _HISTORY.validate_json(hist), blob)
        partial = self.db.execute(
            "SELECT blob FROM partials WHERE job_id = ?", (job.job_id,)
        ).fetchone()
        job.partial = read(partial[0], f"job {job.job_id}'s partial") if partial else None
        return job

    def close(self) -> None:
        """Commit what is written, unless a write failed: then the open transaction is dropped
        and the database stays at the last commit. A failing final commit raises, after all
        is closed."""
        try:
            if self.failure is None:
                self.commit()
        finally:
            self._wal.stop()
            self.db.close()  # the last connection to close copies the rest of the WAL back
            self.blobs.close()
            os.close(self._lock_fd)


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
