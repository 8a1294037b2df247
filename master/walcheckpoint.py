"""WAL checkpoints of the state database on a thread of their own (see WalCheckpointer)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

WAL_INTERVAL = 5.0  # seconds between WAL checkpoints at most (see WalCheckpointer)


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
