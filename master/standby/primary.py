"""The master loop of a primary with a standby or an arbiter: it acts only while it holds its
lease, stamps its epoch on what it sends, and ships every commit to the standby."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import zmq
from prometheus_client import Gauge

from shardmill.config import MasterSettings
from shardmill.errors import SteppedDown
from shardmill.master.brain import events as ev
from shardmill.master.loop import MasterLoop
from shardmill.master.standby.election import Election, step_down
from shardmill.master.standby.recording import RecordingConnection
from shardmill.master.standby.shipper import Shipper
from shardmill.master.workers import Result
from shardmill.ops.registry import Registry

log = logging.getLogger(__name__)


class PrimaryLoop(MasterLoop):
    """MasterLoop, gated by the election and with a Shipper on the store's commits."""

    def __init__(
        self, settings: MasterSettings, registry: Registry, *, election: Election, epoch: int
    ) -> None:
        super().__init__(settings, registry)
        self.election, self.epoch = election, epoch
        self.core.epoch = epoch
        self._first_dispatch = True
        store = self.core.checkpoint.store
        assert store is not None and settings.state_dir is not None
        db = store.db
        assert isinstance(db, RecordingConnection)
        self.shipper: Shipper | None = None
        self._in_sync = Gauge(
            "shardmill_standby_in_sync",
            "1 while a standby holds every commit; 0 while the primary goes on alone",
            registry=self.metrics.registry,
        )
        if settings.peer:
            self.shipper = Shipper(
                self.ctx,
                self.security,
                peer=settings.peer,
                timeout=settings.standby_timeout,
                election=election,
                state_dir=settings.state_dir,
            )
            self.shipper.epoch = epoch
            self._status(None)
            self.shipper.on_change = self._status
            db.journal = []
            store.on_commit = _then(store.on_commit, lambda: self._shipped(db))
        # Stamped on every commit from now on, shipped with them; `primary_epoch` stays
        # this dir's own (see journal.LOCAL_META).
        db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (str(epoch),))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('primary_epoch', ?)", (str(epoch),))
        store.commit()
        self._next_attach = 0.0

    def run(self) -> None:
        log.info("primary for epoch %d (%s)", self.epoch, self.election.arbiter)
        super().run()

    def _hold(self) -> None:
        """Before anything is handled: still primary? (A paused master wakes up here.)"""
        try:
            self.election.check(time.monotonic())
        except SteppedDown as e:
            step_down(str(e))

    def _drain(
        self,
        sock: zmq.Socket[bytes],
        handle: Callable[[list[Any]], None],
        then: Callable[[], None] = lambda: None,
    ) -> None:
        self._hold()
        super()._drain(sock, handle, then)

    def _timers(self) -> None:
        self._hold()
        super()._timers()
        now = time.monotonic()
        if self.shipper is not None and self.shipper.synced is None and now >= self._next_attach:
            self._next_attach = now + self.settings.heartbeat_interval
            self.core.checkpoint.commit()  # what is written so far: the snapshot holds it
            try:
                self.shipper.attach()
            except SteppedDown as e:
                step_down(str(e))

    def _send_task(self, cmd: ev.SendTask, result: Result | None) -> None:
        if self._first_dispatch:  # the takeover's end, as the failover tests and bench see it
            self._first_dispatch = False
            line = {"event": "first_dispatch", "pid": os.getpid(), "epoch": self.epoch}
            print(json.dumps({**line, "wall": time.time()}), flush=True)
        super()._send_task(cmd, result)

    def _shipped(self, db: RecordingConnection) -> None:
        assert self.shipper is not None
        try:
            self.shipper.committed(db)
        except SteppedDown as e:
            step_down(str(e))

    def _status(self, synced: str | None) -> None:
        """What status and metrics say of the standby."""
        assert self.shipper is not None
        self.core.standby = f"in sync: {synced}" if synced else f"alone: {self.shipper.why}"
        self._in_sync.set(1 if synced else 0)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.shipper is not None:
                self.shipper.close()
            self.election.resign()


def _then(
    first: Callable[[float], None] | None, after: Callable[[], None]
) -> Callable[[float], None]:
    def both(seconds: float) -> None:
        if first is not None:
            first(seconds)
        after()

    return both
