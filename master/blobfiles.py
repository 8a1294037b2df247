"""Blobs larger than a threshold as files in the state dir's `blobs/`, each the blob of one cell.

See master/store.py for how a cell references its file ("file:<name>:<size>", TEXT) and when
files are written, deleted and swept.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sqlite3
from collections.abc import Container
from pathlib import Path

from shardmill.errors import StateDirError

log = logging.getLogger(__name__)

BLOBS_DIR = "blobs"
BLOB_THRESHOLD = 1 << 20  # bytes: a larger blob is a file in BLOBS_DIR, its cell a reference
_REF = re.compile(r"file:([0-9a-f]{32}):([0-9]+)")  # a blob file's reference, in its cell
# A cell that may hold a blob file: (column, shard), column one of result, inputs, settled
# (a job's row), shard (a shard row's result, with its index) or partial; shard -1 but for shard.
Cell = tuple[str, int]
# A shard's row: job_id, shard, state, history (JSON list of AttemptInfo), result blob or None.
ShardRow = tuple[str, int, str, str, bytes | None]
# ... as stored: the result may be a blob file's reference (see BlobFiles).
StoredShardRow = tuple[str, int, str, str, bytes | str | None]


class BlobFiles:
    """Blobs larger than `threshold` as files in one directory, each the blob of one cell.

    `owned` is which cells hold a file as of the open transaction; a file whose cell is
    overwritten or deleted is deleted after the next commit (`committed`), never before: until
    then the last commit may still reference it."""

    def __init__(self, directory: Path, threshold: int, dir_fd: int) -> None:
        self.dir = directory
        self.threshold = threshold
        self._dir_fd = dir_fd
        self.owned: dict[str, dict[Cell, str]] = {}  # job_id -> cell -> file name
        self._dropped: list[str] = []  # files no cell references since the open transaction

    @classmethod
    def open(cls, directory: Path, threshold: int, db: sqlite3.Connection) -> BlobFiles:
        """The files `db`'s committed cells reference; any other file in `directory` goes."""
        try:
            directory.mkdir(exist_ok=True)
            blobs = cls(directory, threshold, os.open(directory, os.O_RDONLY | os.O_DIRECTORY))
            with os.scandir(directory) as files:
                empty = next(files, None) is None
            if not empty:  # else no cell owns a file (`read` names a reference to a lost one)
                blobs._index(db)
                blobs._sweep()
        except OSError as e:
            raise StateDirError(
                f"blob directory {directory} cannot be prepared: {e}; make the state dir "
                "writable, then start the master again"
            ) from e
        return blobs

    def put(self, job_id: str, cell: Cell, blob: bytes | None) -> bytes | str | None:
        """What to store in the cell: the blob, or a reference to the file now holding it.
        Raises OSError when the file cannot be written (Store._writing makes it final)."""
        owned = self.owned.get(job_id)
        if owned is not None and cell in owned:
            self._dropped.append(owned.pop(cell))
        if blob is None or len(blob) <= self.threshold:
            return blob
        name = secrets.token_hex(16)
        # A crash before the rename leaves a .tmp file, and one before the commit an
        # unreferenced file: both are swept at the next open.
        tmp = self.dir / f"{name}.tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.dir / name)
        os.fsync(self._dir_fd)  # the name is durable before any row can reference it
        self.owned.setdefault(job_id, {})[cell] = name
        return f"file:{name}:{len(blob)}"

    def shard_row(self, row: ShardRow) -> StoredShardRow:
        """The shard row as stored: its result through `put` (skipped when it cannot matter)."""
        job_id, shard, state, history, blob = row
        if job_id not in self.owned and (blob is None or len(blob) <= self.threshold):
            return row
        return (job_id, shard, state, history, self.put(job_id, ("shard", shard), blob))

    def drop(self, job_id: str, columns: Container[str] | None = None) -> None:
        """The job's cells in `columns` (all when None) are deleted or set to NULL."""
        owned = self.owned.get(job_id, {})
        for cell in [c for c in owned if columns is None or c[0] in columns]:
            self._dropped.append(owned.pop(cell))
        if not owned:
            self.owned.pop(job_id, None)

    def committed(self) -> None:
        """Delete the files the commit just made unreferenced."""
        for name in self._dropped:
            try:
                (self.dir / name).unlink(missing_ok=True)
            except OSError:  # harmless: the file is swept at the next open
                log.warning("cannot delete unreferenced blob file %s", name, exc_info=True)
        self._dropped = []

    def read(self, value: bytes | str | None, what: str) -> bytes | None:
        """A cell's blob: itself, or its file's content."""
        if not isinstance(value, str):
            return value
        match = _REF.fullmatch(value)
        if match is None:
            raise StateDirError(
                f"{what} holds {value[:80]!r}, not a blob nor a blob file reference; the state "
                f"database in {self.dir.parent} is damaged: restore it from a backup, or move it "
                "away to start empty"
            )
        path, size = self.dir / match[1], int(match[2])
        try:
            blob = path.read_bytes()
        except FileNotFoundError as e:
            raise StateDirError(f"{what} is in {path}, which is missing{_FIX}") from e
        except OSError as e:
            raise StateDirError(f"{what} is in {path}, which cannot be read: {e}{_FIX}") from e
        if len(blob) != size:
            raise StateDirError(
                f"{what} is in {path}, which holds {len(blob):,} bytes, not {size:,}: it was "
                f"truncated or changed{_FIX}"
            )
        return blob

    def close(self) -> None:
        os.close(self._dir_fd)

    def _index(self, db: sqlite3.Connection) -> None:
        """Which cells hold a file: one pass over each table (a week of jobs is big)."""
        for job_id, *cells in db.execute(_JOB_REFERENCES):
            for column, ref in zip(("result", "inputs", "settled"), cells, strict=True):
                self._own(job_id, (column, -1), ref)
        for job_id, shard, ref in db.execute(_REFERENCES):
            self._own(job_id, ("shard", shard) if shard >= 0 else ("partial", -1), ref)

    def _own(self, job_id: str, cell: Cell, ref: object) -> None:
        match = _REF.fullmatch(ref) if isinstance(ref, str) else None
        if match is not None:  # else `read` says what is wrong
            self.owned.setdefault(job_id, {})[cell] = match[1]

    def _sweep(self) -> None:
        referenced = {name for cells in self.owned.values() for name in cells.values()}
        swept = 0
        for entry in os.scandir(self.dir):
            if entry.is_file() and entry.name not in referenced:
                os.unlink(entry.path)
                swept += 1
        if swept:
            log.info(
                "deleted %d blob file(s) in %s that no committed row references", swept, self.dir
            )


# The rows that may hold blob file references (TEXT cells; see Cell): jobs' (job_id, result,
# inputs, settled), then shards' and partials' (job_id, shard or -1, reference).
_JOB_REFERENCES = """
SELECT job_id, result, inputs, settled FROM jobs
WHERE typeof(result) = 'text' OR typeof(inputs) = 'text' OR typeof(settled) = 'text'
"""
_REFERENCES = """
SELECT job_id, shard, result FROM shards WHERE typeof(result) = 'text'
UNION ALL SELECT job_id, -1, blob FROM partials WHERE typeof(blob) = 'text'
"""
_FIX = (
    "; the state dir was changed outside shardmill: put the file back from a backup, or move "
    "the state dir away to start empty"
)
