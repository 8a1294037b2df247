"""State databases written by older masters, brought to this master's version one step at a
time (each step what that version changed), then resumed as usual."""

from __future__ import annotations

import logging
import sqlite3

from shardmill.master.records import pack_inputs, unpack_blob
from shardmill.wire.codec import Buffer

log = logging.getLogger(__name__)


def migrate(db: sqlite3.Connection, version: int, target: int) -> None:
    """From state version `version` to `target` (autocommit connection, before the master's
    first transaction)."""
    if version == 1:
        _migrate_from_1(db)
    # 2 -> 3: blob cells may name files in blobs/; no old cell does, nothing to change.
    if version < 4:  # jobs keep started_at
        db.execute("ALTER TABLE jobs ADD COLUMN started_at REAL")
    db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(target),))
    log.info("state database migrated from version %d to %d", version, target)


def _migrate_from_1(db: sqlite3.Connection) -> None:
    """State version 1 kept a row per shard input in `inputs`: fold them into the jobs' rows."""
    db.execute("BEGIN")
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
    db.execute("COMMIT")
