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

import errno
import fcntl
import json
import logging
import os
import re
import resource
import secrets
import socket
import sqlite3
import threading
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
from pydantic import TypeAdapter

from shardmill.codec import Buffer, to_bytes
from shardmill.errors import StateDirError
from shardmill.protocol import AttemptInfo, Descriptor, ErrorInfo, JobSpec

log = logging.getLogger(__name__)

# A shard's row: job_id, shard, state, history (JSON list of AttemptInfo), result blob or None.
ShardRow = tuple[str, int, str, str, bytes | None]
# ... as stored: the result may be a blob file's reference (see BlobFiles).
StoredShardRow = tuple[str, int, str, str, bytes | str | None]

FORMAT = "shardmill-state"
# 3: a blob column may hold a TEXT reference to a file in blobs/ (an older master would read
# it as a blob). 2: a job's inputs are one blob in its row, and a finished job's shards one blob
# in its row (1: a row per shard input in an `inputs` table, finished jobs' shards in `shards`).
SCHEMA_VERSION = 3
DB_NAME = "shardmill.db"
LOCK_NAME = "master.lock"
BLOBS_DIR = "blobs"
BLOB_THRESHOLD = 1 << 20  # bytes: a larger blob is a file in BLOBS_DIR, its cell a reference
_REF = re.compile(r"file:([0-9a-f]{32}):([0-9]+)")  # a blob file's reference, in its cell
# A cell that may hold a blob file: (column, shard), column one of result, inputs, settled
# (a job's row), shard (a shard row's result, with its index) or partial; shard -1 but for shard.
Cell = tuple[str, int]
WAL_INTERVAL = 5.0  # seconds between WAL checkpoints at most (see WalCheckpointer)

_DESCRIPTORS: TypeAdapter[list[Descriptor]] = TypeAdapter(list[Descriptor])
_HISTORY: TypeAdapter[list[AttemptInfo]] = TypeAdapter(list[AttemptInfo])

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, spec TEXT NOT NULL, descriptors TEXT NOT NULL,
    part_counts TEXT NOT NULL, submitted_at REAL NOT NULL, state TEXT NOT NULL,
    error TEXT, finished_at REAL, result BLOB, inputs BLOB, settled BLOB);
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


def pack_inputs(inputs: Sequence[tuple[bytes, Sequence[Buffer | np.ndarray]]]) -> bytes | None:
    """Every shard's input (packed value and array frames) as one blob; None when there are none.

    One blob per job rather than a row per shard: a 64-shard map job's inputs cost one row."""
    if not inputs:
        return None
    return bytes(msgpack.packb([[p, [to_bytes(a) for a in arrays]] for p, arrays in inputs]))


def unpack_inputs(blob: bytes | None) -> list[tuple[bytes, list[Buffer]]]:
    return [] if blob is None else [(p, list(arrays)) for p, arrays in msgpack.unpackb(blob)]


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
    inputs: bytes | None = None  # pack_inputs()
    shards: dict[int, StoredShard] = field(default_factory=dict)
    partial: bytes | None = None


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
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
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
            db.execute("PRAGMA wal_autocheckpoint=0")  # WalCheckpointer does it, off this thread
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
        if version == 1:
            _migrate_from_1(db)
        elif version == 2:  # no blob files yet: only the version changes
            db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(SCHEMA_VERSION),))

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
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, 'running', NULL, NULL, NULL, ?, NULL)",
                row,
            )
        self._seq += 1

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
            if not keep_shard_rows:
                self.db.execute("DELETE FROM shards WHERE job_id = ?", (job_id,))
            self.db.execute("DELETE FROM partials WHERE job_id = ?", (job_id,))

    def delete_jobs(self, job_ids: Sequence[str]) -> None:
        with self._writing():
            for job_id in job_ids:
                self.blobs.drop(job_id)
            for table in ("jobs", "shards", "partials"):
                rows = [(j,) for j in job_ids]
                self.db.executemany(f"DELETE FROM {table} WHERE job_id = ?", rows)

    def commit(self) -> None:
        """Make everything written so far durable; raises StateDirError when the disk refuses."""
        self._commits += 1
        if self._commits == self._crash_in_commit:
            log.critical("fault injection: dying inside commit %d", self._commits)
            os._exit(70)
        with self._writing():
            self.db.execute("COMMIT")
            self.db.execute("BEGIN")
        self.blobs.committed()
        self._wal.poke()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Every write: SQLite's error becomes a StateDirError that names the dir and the fix,
        and the first one is final (see `failure`)."""
        if self.failure is not None:
            raise self.failure
        try:
            yield
        except (sqlite3.Error, OSError) as e:  # OSError: a blob file's
            name = _error_name(e)
            self.failure = StateDirError(
                f"cannot write the checkpoint in {self.dir}: {e}"
                f"{f' ({name})' if name else ''}{_disk_facts(self.dir)}; free space or make it "
                "writable, then start the master again: it resumes every job from the last commit"
            )
            raise self.failure from e

    # ---- reading -------------------------------------------------------------------------------

    def load(self) -> Iterator[StoredJob]:
        """Every stored job, oldest first, with what is needed to resume or serve it."""
        rows = self.db.execute(
            "SELECT job_id, spec, descriptors, part_counts, submitted_at, state, error, "
            "finished_at, result, inputs, settled FROM jobs ORDER BY seq"
        ).fetchall()
        for row in rows:
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
            )
            settled = read(row[10], f"job {row[0]}'s shard stories")
            if settled is not None:
                job.shards = _unpack_settled(settled)
            for shard, st, hist, result in self.db.execute(
                "SELECT shard, state, history, result FROM shards WHERE job_id = ?", (job.job_id,)
            ):
                blob = read(result, f"job {job.job_id}'s shard {shard} result")
                job.shards[shard] = StoredShard(st, _HISTORY.validate_json(hist), blob)
            partial = self.db.execute(
                "SELECT blob FROM partials WHERE job_id = ?", (job.job_id,)
            ).fetchone()
            job.partial = read(partial[0], f"job {job.job_id}'s partial") if partial else None
            yield job

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
        with open(tmp, "xb") as f:
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
        for job_id, column, shard, ref in db.execute(_REFERENCES):
            match = _REF.fullmatch(ref)
            if match is not None:  # else `read` says what is wrong
                self.owned.setdefault(job_id, {})[(column, shard)] = match[1]

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


# Every blob file reference in the database: (job_id, column, shard, reference); see Cell.
_REFERENCES = """
SELECT job_id, 'result', -1, result FROM jobs WHERE typeof(result) = 'text'
UNION ALL SELECT job_id, 'inputs', -1, inputs FROM jobs WHERE typeof(inputs) = 'text'
UNION ALL SELECT job_id, 'settled', -1, settled FROM jobs WHERE typeof(settled) = 'text'
UNION ALL SELECT job_id, 'shard', shard, result FROM shards WHERE typeof(result) = 'text'
UNION ALL SELECT job_id, 'partial', -1, blob FROM partials WHERE typeof(blob) = 'text'
"""
_FIX = (
    "; the state dir was changed outside shardmill: put the file back from a backup, or move "
    "the state dir away to start empty"
)


def _error_name(e: sqlite3.Error | OSError) -> str:
    """SQLite's name for the error (SQLITE_FULL), or the errno's (ENOSPC)."""
    if isinstance(e, OSError):
        return errno.errorcode.get(e.errno or 0, "")
    return str(getattr(e, "sqlite_errorname", ""))


class WalCheckpointer:
    """Copies the write-ahead log back into the database, on a thread of its own, every few
    seconds while there are commits.

    SQLite would do it inside whichever commit takes the log past 1000 pages, with an fsync of
    both files: about 20 ms, every 25 or so small jobs, on the loop's thread while a client
    waits. A passive checkpoint takes no lock the loop's commits need, so it runs beside them;
    it only copies committed pages, so a crash in the middle of one loses nothing. Rare is
    cheaper: each costs an fsync of both files, and a page rewritten by many commits (the
    jobs table's, the freelist's) is copied once. Every 0.5 s cost a 10k-task map 5 % more.
    """

    def __init__(self, path: Path, interval: float) -> None:
        self._path = path
        self.interval = interval  # seconds: the WAL holds at most about this much of commits
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Something was committed: checkpoint within `interval`."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None)
        try:
            while True:
                self._wake.wait()
                if self._stopping.wait(self.interval):  # let commits gather meanwhile
                    break
                self._wake.clear()
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:  # the WAL only grows until the next try; commits go on
                    log.warning("WAL checkpoint of %s failed", self._path, exc_info=True)
        finally:
            db.close()


def _disk_facts(state_dir: Path) -> str:
    """What the OS says about the state dir, for the error: SQLite's own message does not tell
    a full disk from a read-only one or a file size limit (all can read "disk I/O error")."""
    facts = []
    try:
        vfs = os.statvfs(state_dir)
        facts.append(f"{vfs.f_bavail * vfs.f_frsize:,} bytes free on its filesystem")
        if vfs.f_flag & os.ST_RDONLY:
            facts.append("mounted read-only")
    except OSError as e:
        facts.append(f"statvfs failed: {e}")
    if not os.access(state_dir, os.W_OK):
        facts.append("the directory is not writable")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        facts.append(f"file size limit (ulimit -f) {limit:,} bytes")
    return f" [{', '.join(facts)}]"


def _unpack_settled(blob: bytes) -> dict[int, StoredShard]:
    """Store.job_ended's `settled`, read back."""
    return {
        index: StoredShard(
            state,
            [
                AttemptInfo(
                    attempt=attempt,
                    worker=worker,
                    started=started,
                    ended=ended,
                    outcome=outcome,
                    error=None if error is None else ErrorInfo.model_validate(error),
                )
                for attempt, worker, started, ended, outcome, error in history
            ],
            None,
        )
        for index, state, history in msgpack.unpackb(blob)
    }


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
    db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(SCHEMA_VERSION),))
    db.execute("COMMIT")
    log.info("state database migrated from version 1 to %d", SCHEMA_VERSION)
