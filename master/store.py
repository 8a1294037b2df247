"""Checkpoints in the state directory: SQLite (WAL) for jobs, shards, partials and results.

A shard's row and the partial it was merged into are written in one transaction, so "merged"
on disk means merged. Writes are grouped: the loop commits once per poll iteration, and always
before it tells a client anything that depends on them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from pydantic import TypeAdapter

from shardmill.codec import Buffer, to_bytes
from shardmill.errors import StateDirError
from shardmill.protocol import AttemptInfo, Descriptor, JobSpec

log = logging.getLogger(__name__)

FORMAT = "shardmill-state"
SCHEMA_VERSION = 1
DB_NAME = "shardmill.db"
LOCK_NAME = "master.lock"

_DESCRIPTORS: TypeAdapter[list[Descriptor]] = TypeAdapter(list[Descriptor])
_HISTORY: TypeAdapter[list[AttemptInfo]] = TypeAdapter(list[AttemptInfo])

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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


def pack_blob(payload: bytes, arrays: Sequence[Buffer | np.ndarray]) -> bytes:
    """A packed value and its array frames as one blob."""
    return bytes(msgpack.packb([payload, [to_bytes(a) for a in arrays]]))


def unpack_blob(blob: bytes) -> tuple[bytes, list[Buffer]]:
    payload, arrays = msgpack.unpackb(blob)
    return payload, list(arrays)


@dataclass
class StoredShard:
    state: str
    history: list[AttemptInfo]
    result: bytes | None


@dataclass
class StoredJob:
    job_id: str
    spec: JobSpec
    descriptors: list[Descriptor]
    part_counts: list[int]
    submitted_at: float
    state: str
    error: str | None
    finished_at: float | None
    result: bytes | None
    inputs: list[bytes] = field(default_factory=list)
    shards: dict[int, StoredShard] = field(default_factory=dict)
    partial: bytes | None = None


class Store:
    """One master's checkpoint database; holds an exclusive lock on the directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StateDirError(f"state dir {state_dir} cannot be created: {e}") from e
        self._lock_fd = self._lock()
        self.path = state_dir / DB_NAME
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self.db = self._open(fresh)
        self._seq = self._max_seq()
        # Fault injection for the crash tests: die inside the Nth commit, its writes in flight.
        self._crash_in_commit = int(os.environ.get("SHARDMILL_FAULT_CRASH_IN_COMMIT", "0"))
        self._commits = 0

    # ---- opening -------------------------------------------------------------------------------

    def _lock(self) -> int:
        path = self.dir / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if fresh:
                db.executescript("BEGIN;" + SCHEMA + "COMMIT;")
                db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("format", FORMAT), ("version", str(SCHEMA_VERSION))],
                )
            else:
                self._check(db)
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

    def _max_seq(self) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()
        return int(row[0])

    # ---- writing (inside the open transaction) -------------------------------------------------

    def add_job(
        self,
        job_id: str,
        spec: JobSpec,
        descriptors: Sequence[Any],
        part_counts: Sequence[int],
        submitted_at: float,
        inputs: Sequence[tuple[bytes, Sequence[Buffer]]],
    ) -> None:
        self._seq += 1
        descs = json.dumps([d.model_dump(mode="json") for d in descriptors])
        self.db.execute(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, 'running', NULL, NULL, NULL)",
            (
                job_id,
                self._seq,
                spec.model_dump_json(),
                descs,
                json.dumps(list(part_counts)),
                submitted_at,
            ),
        )
        self.db.executemany(
            "INSERT INTO inputs VALUES (?, ?, ?)",
            [(job_id, i, pack_blob(p, a)) for i, (p, a) in enumerate(inputs)],
        )

    def shard_settled(
        self,
        job_id: str,
        shard: int,
        state: str,
        history: list[AttemptInfo],
        result: bytes | None = None,
    ) -> None:
        hist = json.dumps([a.model_dump(mode="json") for a in history])
        self.db.execute(
            "INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?, ?)",
            (job_id, shard, state, hist, result),
        )

    def save_partial(self, job_id: str, blob: bytes, merged: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO partials VALUES (?, ?, ?)", (job_id, blob, merged))

    def job_ended(
        self,
        job_id: str,
        state: str,
        error: str | None,
        finished_at: float,
        result: bytes | None,
        *,
        keep_shard_results: bool = False,
    ) -> None:
        self.db.execute(
            "UPDATE jobs SET state = ?, error = ?, finished_at = ?, result = ? WHERE job_id = ?",
            (state, error, finished_at, result, job_id),
        )
        # The inputs and partials were only needed to finish the job; a map job's shard
        # results are its result.
        self.db.execute("DELETE FROM inputs WHERE job_id = ?", (job_id,))
        if not keep_shard_results:
            self.db.execute("UPDATE shards SET result = NULL WHERE job_id = ?", (job_id,))
        self.db.execute("DELETE FROM partials WHERE job_id = ?", (job_id,))

    def delete_jobs(self, job_ids: Sequence[str]) -> None:
        for table in ("jobs", "inputs", "shards", "partials"):
            self.db.executemany(f"DELETE FROM {table} WHERE job_id = ?", [(j,) for j in job_ids])

    def commit(self) -> None:
        """Make everything written so far durable; raises StateDirError when the disk refuses."""
        self._commits += 1
        if self._commits == self._crash_in_commit:
            log.critical("fault injection: dying inside commit %d", self._commits)
            os._exit(70)
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            raise StateDirError(f"cannot write checkpoint {self.path}: {e}") from e
        self.db.execute("BEGIN")

    # ---- reading -------------------------------------------------------------------------------

    def load(self) -> Iterator[StoredJob]:
        """Every stored job, oldest first, with what is needed to resume or serve it."""
        rows = self.db.execute(
            "SELECT job_id, spec, descriptors, part_counts, submitted_at, state, error, "
            "finished_at, result FROM jobs ORDER BY seq"
        ).fetchall()
        for row in rows:
            job = StoredJob(
                job_id=row[0],
                spec=JobSpec.model_validate_json(row[1]),
                descriptors=_DESCRIPTORS.validate_json(row[2]),
                part_counts=json.loads(row[3]),
                submitted_at=row[4],
                state=row[5],
                error=row[6],
                finished_at=row[7],
                result=row[8],
            )
            for shard, st, hist, result in self.db.execute(
                "SELECT shard, state, history, result FROM shards WHERE job_id = ?", (job.job_id,)
            ):
                job.shards[shard] = StoredShard(st, _HISTORY.validate_json(hist), result)
            job.inputs = [
                b
                for (b,) in self.db.execute(
                    "SELECT blob FROM inputs WHERE job_id = ? ORDER BY shard", (job.job_id,)
                )
            ]
            partial = self.db.execute(
                "SELECT blob FROM partials WHERE job_id = ?", (job.job_id,)
            ).fetchone()
            job.partial = partial[0] if partial else None
            yield job

    def close(self) -> None:
        try:
            self.commit()
        except StateDirError:
            log.error("final checkpoint failed", exc_info=True)
        self.db.close()
        os.close(self._lock_fd)
