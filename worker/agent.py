"""The worker agent: one DEALER socket, heartbeats both ways, children doing the compute.

The agent never runs user code, so a GIL-bound or hung task cannot delay a heartbeat. It says
READY on connect, HEARTBEAT while alive and DISCONNECT on a clean exit; when the master goes
silent it reconnects with capped exponential backoff and re-registers with the shards it holds.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import zmq

from shardmill import __version__, exitcodes
from shardmill.config import WorkerSettings, addresses
from shardmill.errors import ProtocolError
from shardmill.health import HealthFile
from shardmill.wire import shm
from shardmill.wire.codec import bundles, decode, encode, unbundle, unpack_header
from shardmill.wire.handshake import HandshakeWatch, unreachable
from shardmill.wire.protocol import (
    CancelTasks,
    Disconnect,
    Draining,
    EchoTasks,
    ErrorInfo,
    ErrorReply,
    Heartbeat,
    MasterPing,
    Message,
    Ready,
    ShardFailed,
    Welcome,
)
from shardmill.wire.security import Security
from shardmill.worker.calls import allow_pickle
from shardmill.worker.resend import Recent, too_large
from shardmill.worker.runner import Running, TaskHead
from shardmill.worker.shuffle import Pieces
from shardmill.worker.slots import Slots
from shardmill.worker.usage import Usage

log = logging.getLogger(__name__)
# A worker queues at most this many short shards per slot beyond its slots (the master sizes
# the window to the round trip below it): at 20 ms RTT and ~0.1 ms per task (bundles, the
# child's pipe queue) a slot needs ~200; 64 held a far worker to half its loopback rate.
PREFETCH_PER_SLOT = 256
BUNDLE_PARTS = 256  # the most results sent to the master as one bundle


class Agent:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.interval, self.liveness = settings.heartbeat_interval, settings.heartbeat_liveness
        self.security = Security.resolve(settings.keys, settings.insecure, "worker")
        allow_pickle(settings.allow_pickle)  # before any child: they read it from the env
        self.pieces = Pieces(settings, self.security, self.worker_id)  # before any child
        self.slots = Slots(
            self.worker_id,
            list(settings.imports),
            settings.slots,
            self._fail,
            self._forward,
            output_bytes=settings.output_bytes,
            echo=self._send,
        )
        self.usage = Usage()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock: zmq.Socket[bytes] | None = None
        self.watch: HandshakeWatch | None = None
        self.met_master = False  # a handshake with the master succeeded once
        self.poller = zmq.Poller()
        # Masters to try in turn, the one tried now, the highest epoch heard (docs/standby.md)
        self.masters, self.at, self.epoch, self._fenced = addresses(settings.master), 0, 0, False
        # Short shards the master may send beyond our slots wait in `slots.pending` and start
        # the moment a child is free; at most `prefetch` (the master sizes the window below it).
        cap = settings.prefetch
        self.prefetch = min(4096, PREFETCH_PER_SLOT * settings.slots) if cap is None else cap
        self.outbox: list[list[Any]] = []  # what this step sends, as bundles at its end
        self.recent = Recent()  # results sent lately: resent after a reconnect
        self.max_bytes = 256 * 2**20  # the largest message the master reads (its WELCOME says)
        self.heard_at = self.last_heard = time.monotonic()  # last heard: truly / reconnected
        self.next_beat, self.reconnect_delay = 0.0, self.interval
        self.draining_since: float | None = None
        self.health = HealthFile(settings.health_file, self.worker_id)
        self.alive = HealthFile(settings.alive_file, self.worker_id)
        self.fatal: str | None = None  # set when the master refuses us for good
        self._probe: str | None = None  # a /dev/shm file the master looks for at READY
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    # ---- lifecycle -----------------------------------------------------------------------------

    def run(self) -> int:
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)  # the wakeup fd carries the signal number
        self.poller.register(self._wake_r, zmq.POLLIN)
        self.slots.register(self.poller)
        self._connect()
        self._flush()
        try:
            while not self._drained() and self.fatal is None:
                self._step()
                self._flush()
        finally:
            self._shutdown()
        return exitcodes.CONFIG if self.fatal else exitcodes.OK

    def _step(self) -> None:
        ready = dict(self.poller.poll(self._timeout_ms()))
        now = time.monotonic()
        self.alive.touch(now, self.interval)
        if self._wake_r in ready:
            self._on_signal(os.read(self._wake_r, 64))
        if self.watch is not None and self.watch.monitor in ready and (bad := self.watch.check()):
            log.error("%s (master %s)", bad, self.settings.master)  # waiting will not mend it
            self.fatal = bad
        if self.sock is not None and self.sock in ready:
            self._drain_socket()
        self.slots.step(ready, now)
        if now >= self.next_beat:
            self.next_beat = now + self.interval
            self._beat()
        if now - self.last_heard > self.interval * self.liveness and self.draining_since is None:
            self._reconnect()

    def _timeout_ms(self) -> int:
        now = time.monotonic()
        deadlines = [self.next_beat, self.last_heard + self.interval * self.liveness]
        deadlines += self.slots.deadlines()
        if self.draining_since is not None:
            deadlines.append(self.draining_since + self.settings.drain_grace)
        return max(0, int((min(deadlines) - now) * 1000) + 1)

    # ---- master connection ---------------------------------------------------------------------

    def _connect(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, self.worker_id.encode())
        self.security.client(sock, "worker")
        met = self.met_master
        self.watch = HandshakeWatch(sock, role="worker", keys=self.security.keys, met=met)
        sock.connect(self.masters[self.at])
        self.sock = sock
        self.poller.register(sock, zmq.POLLIN)
        self.poller.register(self.watch.monitor, zmq.POLLIN)
        self._send(self._ready())
        log.info(
            "worker %s connecting to %s with %d slots",
            self.worker_id,
            self.masters[self.at],
            len(self.slots.children),
        )

    def _reconnect(self) -> None:
        now = time.monotonic()
        quiet = self.watch is not None and self.watch.nothing_listening()
        what = "nothing is listening there" if quiet else f"silent for {now - self.heard_at:.1f} s"
        log.warning(
            "%s; reconnecting (backoff %.1f s)",
            unreachable(self.settings.master, what, role="worker"),
            self.reconnect_delay,
        )
        self._close_socket(linger=0)
        self.at = (self.at + 1) % len(self.masters)
        self._connect()
        self.recent.resend(self._send_frames)  # results sent before the silence may be lost
        self.last_heard = now + self.reconnect_delay - self.interval * self.liveness
        if self.at == 0:  # back off once every master was tried
            self.reconnect_delay = min(self.settings.reconnect_max, self.reconnect_delay * 2)

    def _close_socket(self, linger: int) -> None:
        if self.watch is not None:
            self.met_master = self.watch.met
            self.poller.unregister(self.watch.monitor)
            self.watch.close()
            self.watch = None
        if self.sock is not None:
            self.poller.unregister(self.sock)
            self.sock.close(linger=linger)
            self.sock = None
        self.outbox.clear()  # results among it are resent from `recent`

    def _ready(self) -> Ready:
        self._drop_probe()
        self._probe = shm.create_probe()
        return Ready(
            slots=len(self.slots.children),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            modules=list(self.settings.imports),
            held=self.slots.held(),
            shm_probe=self._probe or "",
            prefetch=self.prefetch,
        )

    def _drop_probe(self) -> None:
        if self._probe is not None:
            shm.remove(self._probe)
            self._probe = None

    def _drain_socket(self) -> None:
        assert self.sock is not None
        echo = 0.0  # the newest ping's clock, echoed once after the drain (not once per ping)
        while not self._fenced:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._heard()
            try:
                parts = unbundle(frames)
            except ProtocolError as e:
                log.warning("bad message from master: %s", e)
                continue
            for part in parts:
                if self._fenced:  # the rest of a replaced master's bundle is refused too
                    break
                echo = max(echo, self._on_part(part))
        if self._fenced:
            self._fenced = False
            self._reconnect()  # to the next master: this one was replaced
            return
        if echo:  # the master times the round trip with it; it is our beat, too
            self._beat(echo)
            self.next_beat = time.monotonic() + self.interval

    def _on_part(self, part: Sequence[Any]) -> float:
        """One message from the master, carried out; a ping's clock (0.0 for the rest)."""
        try:
            header = unpack_header(part[0])
            if self._stale(header.get("epoch", 0)):
                return 0.0
            if header.get("kind") == "task":  # most of them: read, not validated
                task = TaskHead.read(header)
                self.slots.add(task, [memoryview(f.buffer) for f in part])
                return 0.0
            decoded = decode(part)
        except ProtocolError as e:
            log.warning("bad message from master: %s", e)
            return 0.0
        if isinstance(decoded.msg, MasterPing):
            return decoded.msg.sent
        self._on_master(decoded.msg)
        return 0.0

    def _stale(self, epoch: object) -> bool:
        """Whether a message of this `epoch` comes from a master that was replaced (one
        below the highest heard): refused, and the agent moves on to the next master."""
        if not isinstance(epoch, int):
            return False  # the decode that follows names the problem
        if epoch >= self.epoch:
            self.epoch = epoch
            return False
        log.warning(
            "master %s speaks for epoch %d, below %d: it was replaced; refused",
            self.masters[self.at],
            epoch,
            self.epoch,
        )
        self._fenced = True
        return True

    def _beat(self, echo: float = 0.0) -> None:
        cpu, rss = self.usage.sample(time.monotonic())
        held = self.pieces.server.bytes
        self._send(Heartbeat(echo=echo, shuffle_bytes=held, cpu=cpu, rss=rss))

    def _heard(self) -> None:
        now = time.monotonic()
        self.last_heard = self.heard_at = now
        self.reconnect_delay = self.interval
        self.health.touch(now, self.interval)

    def _on_master(self, msg: Message) -> None:
        match msg:
            case CancelTasks(job_id=job, shards=shards):
                self.slots.cancel(job, set(shards))
            case EchoTasks(job_id=job):
                self.slots.echo_job(job)
            case Welcome():
                self._drop_probe()  # the master has looked
                self.interval, self.liveness = msg.heartbeat_interval, msg.heartbeat_liveness
                self.max_bytes = msg.max_message_bytes
                # Beat at the master's pace from now on, not at our default's next tick.
                self.next_beat = min(self.next_beat, time.monotonic() + self.interval)
            case ErrorReply(code="version" | "revoked"):
                log.error("master refused this worker: %s", msg.message)
                self.fatal = msg.message
            case ErrorReply():
                log.warning("master refused a message: %s %s", msg.code, msg.message)
            case _ if msg.kind == "reregister":
                log.info("master asked this worker to register again")
                self.slots.collect()  # a result already written is sent, not held
                self._send(self._ready())
                self.recent.resend(self._send_frames)  # a restarted master may have lost some

    def _send(self, msg: Message, arrays: list[Any] | None = None) -> None:
        self._send_frames(encode(msg, arrays or ()))

    def _send_frames(self, frames: list[Any]) -> None:
        if self.sock is not None:
            self.outbox.append(frames)

    def _flush(self) -> None:
        """Send what this step queued, as few bundles as the master's message limit allows."""
        outbox, self.outbox = self.outbox, []
        if self.sock is None:
            return
        for frames in bundles(outbox, max_parts=BUNDLE_PARTS, max_bytes=self.max_bytes):
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                log.warning("master queue full; results dropped (they will be re-run)")

    # ---- children ------------------------------------------------------------------------------

    def _forward(self, run: Running, raw: list[memoryview], now: float) -> None:
        """A child's reply to the master as the child wrote it: no re-encoding."""
        frames: list[Any] = list(raw)
        if (size := sum(memoryview(f).nbytes for f in frames)) > self.max_bytes:
            self._fail(run.task, too_large(size, self.max_bytes), run.started)
            return
        self._send_frames(frames)
        # kept from before the master fell silent (not the reconnects since: a restarted master
        # may not have saved what the old one took in its last moments) and a margin
        horizon = min(now, self.heard_at) - 2 * self.interval * self.liveness
        self.recent.keep(now, frames, size, horizon)  # the master may not have had it

    def _fail(self, task: TaskHead, err: ErrorInfo, started: float) -> None:
        msg = ShardFailed(
            job_id=task.job_id,
            shard=task.shard,
            attempt=task.attempt,
            duration=time.monotonic() - started,
            error=err,
            # A batch's process died: which shard did it is unknown, so the master runs each
            # of them again alone (uncharged) and charges the one that fails then.
            more=task.more_attempts(),
        )
        self._send(msg)

    # ---- drain and shutdown --------------------------------------------------------------------

    def _on_signal(self, data: bytes) -> None:
        if self.draining_since is None and data:
            log.info("signal %d: draining (grace %.0f s)", data[0], self.settings.drain_grace)
            self.draining_since = time.monotonic()
            self._send(Draining())
            self.slots.drain()

    def _drained(self) -> bool:
        if self.draining_since is None:
            return False
        busy = self.slots.busy()
        if not busy:
            return True
        if time.monotonic() - self.draining_since < self.settings.drain_grace:
            return False
        self.slots.stop(busy)
        return True

    def _shutdown(self) -> None:
        if self.sock is not None and not self.fatal:
            self._send(Disconnect(handback=self.slots.handback))
            self._flush()
        self._close_socket(linger=1000)  # give the DISCONNECT a moment to leave
        self.slots.close(timeout=2.0)
        self.pieces.close()
        self._drop_probe()
        signal.set_wakeup_fd(-1)
        os.close(self._wake_r)
        os.close(self._wake_w)
        log.info("worker %s stopped", self.worker_id)


def serve(settings: WorkerSettings) -> int:
    return Agent(settings).run()
