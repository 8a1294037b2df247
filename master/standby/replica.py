"""The standby: applies the primary's snapshot and commits to its own state dir, acknowledging
each, and campaigns until it wins (or is promoted); then it returns its epoch."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from shardmill.config import MasterSettings
from shardmill.errors import ElectionError
from shardmill.health import HealthFile
from shardmill.master.standby.election import Election
from shardmill.master.standby.journal import Replica, meta_epoch
from shardmill.wire import replication as rep
from shardmill.wire.security import Security

log = logging.getLogger(__name__)
CAMPAIGN_EVERY = 0.1  # seconds between tries to win while the leader key is held


class Standby:
    """The replication socket (a CURVE server that admits only the master key pair's holder)
    and the copy of the state it keeps."""

    def __init__(
        self,
        settings: MasterSettings,
        security: Security,
        ctx: zmq.Context[zmq.Socket[bytes]],
        *,
        name: str,
    ) -> None:
        assert settings.state_dir is not None, "a standby needs a state dir (config checks it)"
        self.settings, self.name = settings, name
        self.replica = Replica(settings.state_dir)
        # The primary's epoch this state came from, and the one this dir's master held.
        self.epoch = meta_epoch(settings.state_dir, "epoch")
        self.primary_epoch = meta_epoch(settings.state_dir, "primary_epoch")
        self.synced = False  # a snapshot came in this run: its commits follow
        # Touched while it holds a live copy: `shardmill health` (a pod's probes) says ready.
        self.health = HealthFile(settings.health_file, f"standby pid {os.getpid()}")
        self.auth = _only_masters(ctx, security)
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        security.server(self.sock, "replication")
        self.sock.bind(f"tcp://{settings.host}:{settings.replica_port}")

    def wait_to_win(self, election: Election) -> int | None:
        """Serve the primary until this master wins the election (its epoch), or a signal
        stops it (None)."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        print(json.dumps({"event": "standby", "pid": os.getpid(), "name": self.name}), flush=True)
        log.info("standby %s: replicating on port %d", self.name, self.settings.replica_port)
        try:
            while True:
                ready = dict(poller.poll(int(CAMPAIGN_EVERY * 1000)))
                if wake_r in ready:
                    return None
                if self.sock in ready:
                    self._drain()
                if self.synced:
                    self.health.touch(time.monotonic(), 1.0)
                if (epoch := self._campaign(election)) is not None:
                    return epoch
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            self.close()

    def _campaign(self, election: Election) -> int | None:
        try:
            return election.campaign(primary_epoch=self.primary_epoch, replica_epoch=self.epoch)
        except ElectionError as e:
            log.warning("standby: %s", e)
            return None

    def _drain(self) -> None:
        while True:
            try:
                identity, frame = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:  # not two frames: not a primary of ours
                continue
            reply = self._on_message(frame)
            try:
                self.sock.send_multipart([identity, rep.encode(reply)], zmq.NOBLOCK)
            except zmq.ZMQError as e:
                log.debug("reply to the primary not sent: %s", e)

    def _on_message(self, frame: bytes) -> rep.Replication:
        """Apply one snapshot or commit; the reply that says so, or why not."""
        try:
            msg = rep.decode(frame)
        except ValueError as e:
            return rep.Refused(epoch=self.epoch, reason=f"not a replication message: {e}")
        if msg.epoch < self.epoch:
            why = f"epoch {msg.epoch} is below {self.epoch}: that primary was replaced"
            return rep.Refused(epoch=self.epoch, seq=msg.seq, reason=why)
        if isinstance(msg, rep.Snapshot):
            self.replica.load_snapshot(msg.db, msg.files)
            self.synced, self.primary_epoch, self.epoch = True, 0, msg.epoch
            log.info("standby: snapshot of epoch %d loaded (%d bytes)", msg.epoch, len(msg.db))
        elif isinstance(msg, rep.Commit) and self.synced:
            self.replica.apply(msg.statements, msg.files)
        else:
            why = "a commit before any snapshot" if isinstance(msg, rep.Commit) else msg.kind
            return rep.Refused(epoch=self.epoch, seq=msg.seq, reason=why)
        return rep.Applied(epoch=self.epoch, seq=msg.seq, standby=self.name)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.replica.close()
        if self.auth is not None:
            self.auth.stop()  # the primary's own ZAP handler starts next


class _MasterKey:
    """ZAP credentials: only a holder of the master pair may replicate to us."""

    def __init__(self, public: bytes) -> None:
        self.public = public

    def callback(self, domain: Any, key: Any) -> bool:
        return bool(key == self.public)


def _only_masters(
    ctx: zmq.Context[zmq.Socket[bytes]], security: Security
) -> ThreadAuthenticator | None:
    if security.keys is None:
        return None
    public, _ = zmq.auth.load_certificate(security.keys / "master.key")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain="replication", credentials_provider=_MasterKey(public))
    return auth
