"""State dirs written by older masters, brought to this version one step at a time."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import msgpack

from shardmill.master.blobfiles import BLOBS_DIR
from shardmill.master.brain.archive import JobSummary
from shardmill.master.records import pack_inputs, unpack_blob, unpack_settled
from shardmill.wire.codec import Buffer
from shardmill.wire.protocol import AttemptInfo

log = logging.getLogger(__name__)


def migrate(db: sqlite3.Connection, version: int, target: int) -> None:
    """Each step from `version` to `target`, in one transaction."""
    db.execute("BEGIN")
    for step in range(version, target):
        _STEPS[step](db)
    db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(target),))
    db.execute("COMMIT")
    log.info("state database migrated from version %d to %d", version, target)


def _from_1(db: sqlite3.Connection) -> None:
    """State version 1 kept a row per shard input in `inputs`: fold them into the jobs' rows."""
    db.execute("ALTER TABLE jobs ADD COLUMN inputs BLOB")
    db.execute("ALTER TABLE jobs ADD COLUMN settled BLOB")
    rows = db.execute("SELECT job_id, blob FROM inputs ORDER BY job_id, shard").fetchall()
    per_job: dict[str, list[tuple[bytes, list[Buffer]]]] = {}
    for job_id, blob in rows:
        per_job.setdefault(job_id, []).append(unpack_blob(blob))
    db.executemany(
        "UPDATE jobs SET inputs = ? WHERE job_id = ?",
        [(pack_inputs(inputs), job_id) for job_id, inputs in per_job.items()],
    )
    db.execute("DROP TABLE inputs")


def _from_2(db: sqlite3.Connection) -> None:
    """Version 3 may reference blob files: a version 2 database has none yet."""


def _from_3(db: sqlite3.Connection) -> None:
    """Version 4 keeps a job's started_at (and masters' starts in meta, none known before)."""
    db.execute("ALTER TABLE jobs ADD COLUMN started_at REAL")


def _from_4(db: sqlite3.Connection) -> None:
    """Version 5 keeps a summary of each finished job, which is all a restart reads of it."""
    db.execute("CREATE TABLE summaries (job_id TEXT PRIMARY KEY, summary BLOB NOT NULL)")
    row = db.execute("SELECT value FROM meta WHERE key = 'starts'").fetchone()
    starts = [float(t) for t in json.loads(row[0] if row else "[]")]
    rows = db.execute(
        "SELECT job_id, spec, state, error, submitted_at, finished_at, settled, started_at "
        "FROM jobs WHERE state != 'running'"
    )
    db.executemany(
        "INSERT INTO summaries VALUES (?, ?)",
        [(row[0], _summary(db, row, starts)) for row in rows],
    )


def _summary(db: sqlite3.Connection, row: tuple[object, ...], starts: list[float]) -> bytes:
    """A finished job's summary from its version 4 row (its shards' stories are in it) and
    the masters' starts noted in meta (those while it ran are its restarts)."""
    job_id, spec, state, error, submitted_at, finished_at, settled, started_at = row
    raw = json.loads(str(spec))
    shards = {} if settled is None else unpack_settled(_blob(db, settled))
    attempts = [a for s in shards.values() for a in s.history]
    begun, ended = float(submitted_at), float(finished_at or submitted_at)  # type: ignore[arg-type]
    errors = [a.error for a in attempts if a.error is not None and a.error.kind != "cancelled"]
    summary = JobSummary(
        job_id=str(job_id),
        name=raw.get("name", ""),
        owner=raw.get("owner", ""),
        op=raw.get("op", ""),
        state=str(state),
        shards_total=len(shards),
        shards_done=sum(s.state == "done" for s in shards.values()),
        shards_failed=sum(s.state == "failed" for s in shards.values()),
        submitted_at=begun,
        started_at=_started(started_at, attempts),
        finished_at=ended,
        error=None if error is None else str(error),
        duplicates=0,
        attempts_failed=len(errors),
        lost_workers=tuple(dict.fromkeys(e.worker for e in errors if e.kind == "lost")),
        last_failure=None,
        missing_shards=tuple(i for i, s in shards.items() if s.state == "failed"),
        resent=0,
        restarts=tuple(t for t in starts if begun < t < ended),
    )
    return bytes(msgpack.packb(summary.pack()))


def _started(column: object, attempts: list[AttemptInfo]) -> float | None:
    """Its persisted started_at; for a job finished before version 4, its first attempt's."""
    if column is not None:
        return float(column)  # type: ignore[arg-type]
    return min((a.started for a in attempts), default=None)


def _blob(db: sqlite3.Connection, cell: object) -> bytes:
    """A cell's bytes, read from its file in blobs/ when it is a reference (version 3)."""
    if isinstance(cell, bytes):
        return cell
    name = str(cell).split(":")[1]
    path = db.execute("PRAGMA database_list").fetchone()[2]
    return (Path(path).parent / BLOBS_DIR / name).read_bytes()


def _from_5(db: sqlite3.Connection) -> None:
    """Version 6 keeps a running job's highest attempt number given (a restarted master
    numbers new attempts above it: an execution a worker still runs or reports keeps a number
    of its own) and its count of resent results (none known before)."""
    db.execute("ALTER TABLE jobs ADD COLUMN attempts INTEGER")
    db.execute("ALTER TABLE jobs ADD COLUMN resent INTEGER")


_STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _from_1,
    2: _from_2,
    3: _from_3,
    4: _from_4,
    5: _from_5,
}
