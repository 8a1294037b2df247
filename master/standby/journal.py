"""The primary's commits as a log of SQL statements; a snapshot of the whole state; both applied
to a standby's own state directory."""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path

import msgpack

from shardmill.master.blobfiles import BLOBS_DIR
from shardmill.master.standby.recording import Statement
from shardmill.master.store import DB_NAME

_FILE_REF = re.compile(r"^file:([0-9a-f]{32}):[0-9]+$")  # a blob file's reference (blobfiles)
# Meta keys of the primary itself, never copied to a standby: only the master that was
# primary of the last epoch holds it, and it may campaign on its own state (election).
LOCAL_META = ("primary_epoch",)


def pack(statements: Sequence[Statement]) -> bytes:
    return bytes(msgpack.packb([[sql, rows] for sql, rows in statements], use_bin_type=True))


def files_of(statements: Sequence[Statement], blobs: Path) -> dict[str, bytes]:
    """The blob files the statements reference, read from `blobs`. A file gone already was
    replaced within the same commit: no committed row references it."""
    out: dict[str, bytes] = {}
    for _, rows in statements:
        for row in rows:
            for value in row:
                if isinstance(value, str) and (m := _FILE_REF.match(value)):
                    try:
                        out[m.group(1)] = (blobs / m.group(1)).read_bytes()
                    except FileNotFoundError:
                        continue
    return out


def snapshot(db: sqlite3.Connection, blobs: Path) -> tuple[bytes, dict[str, bytes]]:
    """The committed database as one file's bytes (SQLite's online backup), and its blob files."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = sqlite3.connect(Path(tmp) / "copy.db")
        try:
            db.backup(copy)
        finally:
            copy.close()
        data = (Path(tmp) / "copy.db").read_bytes()
    files = {p.name: p.read_bytes() for p in blobs.iterdir() if p.is_file()}
    return data, {name: body for name, body in files.items() if not name.endswith(".tmp")}


class Replica:
    """A standby's copy of the primary's state in its own state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (state_dir / BLOBS_DIR).mkdir(exist_ok=True)
        self.db: sqlite3.Connection | None = None

    def load_snapshot(self, data: bytes, files: dict[str, bytes]) -> None:
        """Replace the state with the primary's: every file written and synced, then the db."""
        self.close()
        blobs = self.dir / BLOBS_DIR
        for old in blobs.iterdir():
            old.unlink()
        self._write_files(files)
        for suffix in ("-wal", "-shm"):
            Path(f"{self.dir / DB_NAME}{suffix}").unlink(missing_ok=True)
        tmp = self.dir / f"{DB_NAME}.incoming"
        _write_synced(tmp, data)
        os.rename(tmp, self.dir / DB_NAME)
        db = self._open()
        db.executemany("DELETE FROM meta WHERE key = ?", [(k,) for k in LOCAL_META])

    def apply(self, statements: bytes, files: dict[str, bytes]) -> None:
        """One commit of the primary, in one transaction (its blob files first)."""
        db = self._open()
        self._write_files(files)
        db.execute("BEGIN")
        try:
            for sql, rows in msgpack.unpackb(statements, raw=False):
                db.executemany(sql, [tuple(r) for r in rows])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def _open(self) -> sqlite3.Connection:
        if self.db is None:
            self.db = sqlite3.connect(self.dir / DB_NAME, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        return self.db

    def _write_files(self, files: dict[str, bytes]) -> None:
        for name, body in files.items():
            if not re.fullmatch(r"[0-9a-f]{32}", name):
                raise ValueError(f"blob file name {name!r} is not one a primary writes")
            _write_synced(self.dir / BLOBS_DIR / name, body)


def _write_synced(path: Path, data: bytes) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def meta_epoch(state_dir: Path, key: str) -> int:
    """An epoch in the state database's meta table: `epoch` (of the primary whose state it
    is) or `primary_epoch` (the last this dir's own master held); 0 when there is none."""
    path = state_dir / DB_NAME
    if not path.exists() or path.stat().st_size == 0:
        return 0
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.Error:
        return 0
    finally:
        db.close()
    return int(row[0]) if row else 0


def paired_alone(state_dir: Path) -> str | None:
    """Why a master must not start alone (no --peer, no --alone) on `state_dir`: it was one of
    a pair, and its other master may still be primary or win the election; None when not."""
    epoch = meta_epoch(state_dir, "epoch")
    if not epoch:
        return None
    return (
        f"{state_dir} belongs to a master of a pair (epoch {epoch}): started without --peer it "
        "would serve on its own while the other master may be primary too. Start it with "
        "its pair's --peer and --etcd or --k8s-lease as before (with Compose, the `ha` "
        "profile's .env: docs/compose.md), or, once the other master is stopped for good, "
        "with --alone"
    )
