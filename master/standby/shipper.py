"""The primary's side of commit shipping: each commit to the standby, applied there before
the commit returns (so before anyone hears of its effect), or the standby is let go."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from shardmill.master.blobfiles import BLOBS_DIR
from shardmill.master.standby import journal
from shardmill.master.standby.election import Election, step_down
from shardmill.master.standby.recording import RecordingConnection
from shardmill.master.store import DB_NAME
from shardmill.wire import replication as rep
from shardmill.wire.security import Security

log = logging.getLogger(__name__)


class Shipper:
    """A DEALER to the standby's replication port. `synced` names the standby while it holds
    every commit; None while the primary goes on alone (`why` says why)."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        security: Security,
        *,
        peer: str,
        timeout: float,
        election: Election,
        state_dir: Path,
    ) -> None:
        self.peer, self.timeout, self.election = peer, timeout, election
        self.dir = state_dir
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)  # no standby connected: a send fails at once
        security.client(self.sock, "master")  # both masters hold the master pair
        self.sock.connect(peer)
        self.epoch = 0
        self.seq = 0
        self.synced: str | None = None
        self.why = "no standby has connected yet"
        self.on_change: Callable[[str | None], None] = lambda synced: None  # status, metrics

    def committed(self, db: RecordingConnection) -> None:
        """After each commit of the store: ship its statements, or let the standby go."""
        statements, db.journal = db.journal or [], []
        if self.synced is None or not statements:
            return
        blobs = self.dir / BLOBS_DIR
        msg = rep.Commit(
            epoch=self.epoch,
            seq=self._next(),
            statements=journal.pack(statements),
            files=journal.files_of(statements, blobs),
        )
        if (why := self._exchange(msg)) is not None:
            self._alone(why)

    def attach(self) -> None:
        """While alone: a standby connected gets a snapshot; once applied, it is in sync.
        Call right after a commit (nothing written since is then missing from it)."""
        if self.synced is not None:
            return
        read = sqlite3.connect(self.dir / DB_NAME)
        try:
            data, files = journal.snapshot(read, self.dir / BLOBS_DIR)
        finally:
            read.close()
        msg = rep.Snapshot(epoch=self.epoch, seq=self._next(), db=data, files=files)
        reply = self._send(msg) and self._reply(msg.seq)
        if isinstance(reply, rep.Applied):
            self.election.set_synced(reply.standby)  # only now may it win an election
            self.synced = reply.standby
            log.info("standby %s at %s is in sync: every commit is shipped", self.synced, self.peer)
            self.on_change(self.synced)

    def close(self) -> None:
        self.sock.close(linger=0)

    def _alone(self, why: str) -> None:
        """Let the standby go: it must not win an election on the state it holds."""
        self.election.set_synced(None)
        log.warning("standby %s let go (%s); this primary goes on alone", self.synced, why)
        self.synced, self.why = None, why
        self.on_change(None)

    def _exchange(self, msg: rep.Commit) -> str | None:
        """Ship one commit; None once applied, else why not."""
        if not self._send(msg):
            return "its connection is gone"
        reply = self._reply(msg.seq)
        if reply is None:
            return f"no answer within {self.timeout} s"
        if isinstance(reply, rep.Refused):
            return f"it refused a commit: {reply.reason}"
        return None

    def _send(self, msg: rep.Snapshot | rep.Commit) -> bool:
        try:
            self.sock.send(rep.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _reply(self, seq: int) -> rep.Applied | rep.Refused | None:
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            try:
                msg = rep.decode(self.sock.recv())
            except ValueError as e:
                log.warning("bad reply from the standby: %s", e)
                continue
            if isinstance(msg, rep.Refused) and msg.epoch > self.epoch:
                step_down(f"the standby speaks for epoch {msg.epoch}, above {self.epoch}")
            if isinstance(msg, rep.Applied | rep.Refused) and msg.seq == seq:
                return msg
        return None

    def _next(self) -> int:
        self.seq += 1
        return self.seq
