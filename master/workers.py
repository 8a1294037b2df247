"""The worker socket's messages: one handler per kind, each turned into an event for the brain."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import zmq

from shardmill import __version__
from shardmill.errors import InvalidTransition, ProtocolError, StateDirError
from shardmill.master.brain import events as ev
from shardmill.master.core import Core, send, user_id
from shardmill.master.unnamed import REFUSAL, Unnamed, generated
from shardmill.wire import shm
from shardmill.wire.codec import (
    Buffer,
    as_buffer,
    bundles,
    decode_checked,
    encode,
    encode_header,
    unbundle,
    unpack_header,
)
from shardmill.wire.handshake import fingerprint
from shardmill.wire.keyring import WORKERS, Keyring
from shardmill.wire.protocol import (
    WORKER_KINDS,
    Disconnect,
    ErrorInfo,
    ErrorReply,
    Heartbeat,
    MasterPing,
    Message,
    Ready,
    ShardAttempt,
    ShardDone,
    ShardFailed,
    TaskOutput,
    Welcome,
)

log = logging.getLogger(__name__)
Result = tuple[bytes, list[Buffer]]
MAX_RTT = 10.0  # seconds: an echo older than this (or from the future) is not believed
BUNDLE_PARTS = 256  # the most messages sent to a worker as one bundle...
BUNDLE_BYTES = 1 << 20  # ...and their bytes: a big task travels alone
Handler = Callable[[bytes, Any, list[Buffer]], object]
ApplyAll = Callable[[Sequence[tuple[ev.Event, Result | None]]], object]


class WorkerMessages:
    """Decodes what workers send and feeds the brain; the loop carries out what it decides."""

    def __init__(
        self,
        core: Core,
        sock: zmq.Socket[bytes],
        apply: ApplyAll,
        keyring: Keyring | None = None,
    ) -> None:
        self.core = core
        self.sock = sock
        core.to_worker = self.send  # a client's watch of a job's output, to its workers
        self.keyring = keyring  # None without CURVE
        self.unnamed = Unnamed(core.metrics.unnamed)  # what came under ids libzmq made up
        self._apply_all = apply  # a result rides along with its event, for the merge
        # Results and failures, fed to the brain together once the socket is drained (one
        # dispatch for them all: `report_all`); any other message first lets the ones before
        # it through, to keep the order.
        self._reports: list[tuple[ev.Event, Result | None]] = []
        # What the loop's turn has for each worker, sent at its end as bundles (`flush`): one
        # send and one wake-up for a window of short tasks, in the order they were decided.
        self.outbox: dict[str, list[list[Buffer]]] = {}
        self.handlers: dict[str, Handler] = {
            "ready": self._on_ready,
            "heartbeat": self._on_heartbeat,
            "draining": self._on_draining,
            "disconnect": self._on_disconnect,
            "done": self._on_done,
            "failed": self._on_failed,
            "task_output": self._on_task_output,
        }

    def send(self, worker: str, msg: Message, arrays: Sequence[Any] = ()) -> None:
        """Queue `msg` for `worker`; it leaves at the loop turn's end (`flush`)."""
        if self.core.epoch:
            msg = msg.model_copy(update={"epoch": self.core.epoch})
        self.outbox.setdefault(worker, []).append(encode(msg, arrays))

    def send_header(self, worker: str, header: dict[str, Any], arrays: Sequence[Any]) -> None:
        """As `send`, for a message the master built as plain data (a task)."""
        if self.core.epoch:
            header["epoch"] = self.core.epoch
        self.outbox.setdefault(worker, []).append(encode_header(header, arrays))

    def flush(self) -> None:
        """Send what this turn queued: each worker's messages as few bundles, in order."""
        outbox, self.outbox = self.outbox, {}
        for worker, parts in outbox.items():
            identity = worker.encode()
            for frames in bundles(parts, max_parts=BUNDLE_PARTS, max_bytes=BUNDLE_BYTES):
                try:
                    self.sock.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
                except zmq.ZMQError as e:  # gone, or its queue full: heartbeats tell the brain
                    log.debug("cannot send to %s: %s", worker, e)

    def on_frames(self, frames: list[Any]) -> None:
        """One zmq message from a worker: one protocol message or a bundle of them."""
        identity = bytes(frames[0].bytes)
        worker = _name(identity)
        unnamed = generated(identity)  # not a worker: see master/unnamed.py
        keyed = not unnamed and self.keyring is not None
        if keyed and not self._key_holds(identity, worker, frames[-1]):
            return
        try:
            body = [as_buffer(f) for f in frames[1:]]  # each zmq.Frame's memory, viewed once
            parts = unbundle(body)
        except ProtocolError as e:
            log.warning("bad message from worker %s: %s", worker, e)
            send(self.sock, identity, ErrorReply(code="protocol", message=str(e)))
            return
        # Within the size limit as a whole, each part is: a result need not be weighed again.
        small = sum(memoryview(b).nbytes for b in body) <= self.core.settings.max_message_bytes
        refused = False
        for part in parts:
            if unnamed:
                refused |= not self._claimed(identity, frames[-1], part, small)
            else:
                self._part(identity, worker, part, small)
        if refused:
            send(self.sock, identity, ErrorReply(code="identity", message=REFUSAL))

    def _part(self, identity: bytes, worker: str, part: Sequence[Any], small: bool) -> None:
        done = DoneHead.read(part) if small else None
        if done is not None:  # a plain result, well-formed: no full decode
            self._boundary(identity, worker, partial(self._done, worker, done, part[1:]))
        else:
            self._on_message(identity, worker, part)

    def _claimed(self, identity: bytes, frame: Any, part: Sequence[Any], small: bool) -> bool:
        """A part under a generated id: a report goes on as its real worker's (whose key must
        have sent it); False for what is refused."""
        real = self.unnamed.claim(self.core.brain.jobs, part, identity)
        if real is None:
            return False
        own = real.encode()
        if self.keyring is None or self._key_holds(own, real, frame):
            self._part(own, real, part, small)
        return True

    def _on_message(self, identity: bytes, worker: str, frames: Sequence[Any]) -> None:
        """One worker message: the per-message boundary of the worker socket."""

        def handle() -> None:
            decoded = decode_checked(
                frames,
                max_bytes=self.core.settings.max_message_bytes,
                kinds=WORKER_KINDS,
                expected="a worker message; is this a client?",
            )
            if decoded.msg.kind not in ("done", "failed"):
                self.report_all()  # what came before it, first
            self.handlers[decoded.msg.kind](identity, decoded.msg, decoded.arrays)

        self._boundary(identity, worker, handle)

    def report_all(self) -> None:
        """The results and failures read so far, to the brain at once (the loop calls this when
        the socket is drained)."""
        reports, self._reports = self._reports, []
        if not reports:
            return
        try:
            self._apply_all(reports)
        except (InvalidTransition, StateDirError):
            raise  # a broken invariant or a failed checkpoint write: stop rather than go on
        except Exception:  # the boundary for what several workers sent: log, keep serving
            log.error("error handling %d worker results", len(reports), exc_info=True)

    def _boundary(self, identity: bytes, worker: str, handle: Callable[[], object]) -> None:
        """Log and answer what goes wrong handling a worker's message; keep serving."""
        try:
            handle()
        except ProtocolError as e:
            log.warning("bad message from worker %s: %s", worker, e)
            send(self.sock, identity, ErrorReply(code="protocol", message=str(e)))
        except (InvalidTransition, StateDirError):
            raise  # a broken invariant or a failed checkpoint write: stop rather than go on
        except Exception as e:  # the per-message boundary: log, reply, keep serving everyone
            log.error("error handling a worker message from %s", worker, exc_info=True)
            send(self.sock, identity, ErrorReply(code="internal", message=str(e)))

    def _key_holds(self, identity: bytes, worker: str, frame: Any) -> bool:
        """Whether this message's key may speak for `worker`: still in workers/ (a SIGHUP may
        have revoked it: the worker is dropped and told), and the key it registered with (no
        other key holder can take over its id)."""
        assert self.keyring is not None
        key = user_id(frame)
        bound = self.core.peers.keys.setdefault(worker, key)
        if self.keyring.keys.name(WORKERS, key.encode()) is None:
            text = (
                f"this worker's key (fingerprint {fingerprint(key.encode())}) is no longer in "
                "the master's workers/ folder: it was revoked"
            )
            log.warning("worker %s refused: %s", worker, text)
            send(self.sock, identity, ErrorReply(code="revoked", message=text))
            if worker in self.core.brain.workers:
                self.report_all()  # its results read before this message count
                self.core.peers.forget(worker)
                self.core.apply(ev.WorkerLeft(worker))
            return False
        if bound != key:
            log.warning("worker id %s used by another key than its own: ignored", worker)
            return False
        return True

    def _on_ready(self, identity: bytes, msg: Ready, arrays: list[Buffer]) -> None:
        worker = _name(identity)
        if msg.version != __version__:
            text = (
                f"worker {worker} runs shardmill {msg.version}, this master runs "
                f"{__version__}; run the same version on the master and every worker"
            )
            log.warning("refused: %s", text)
            send(self.sock, identity, ErrorReply(code="version", message=text))
            return
        peers = self.core.peers
        peers.hello[worker] = msg
        if shm.probe_seen(msg.shm_probe):
            peers.shares_memory.add(worker)
            shm.remove(msg.shm_probe)  # seen: a worker killed before our WELCOME leaves nothing
        else:
            peers.shares_memory.discard(worker)
        log.info(
            "worker %s ready: %s pid %d, %d slots, imports %s, shared memory %s",
            worker,
            msg.hostname,
            msg.pid,
            msg.slots,
            msg.modules,
            "yes" if worker in peers.shares_memory else "no",
        )
        timing = self.core.brain.timing
        welcome = Welcome(
            heartbeat_interval=timing.heartbeat_interval,
            heartbeat_liveness=timing.heartbeat_liveness,
            max_message_bytes=self.core.settings.max_message_bytes,
            epoch=self.core.epoch,
        )
        send(self.sock, identity, welcome)
        self.core.apply(ev.WorkerReady(worker, msg.slots, tuple(msg.held), msg.prefetch))
        # Its round trip at once, not at the next beat (up to heartbeat_interval away): until
        # the brain knows it, the worker's queue is one shard deep, and a fresh cluster's first
        # job of short tasks ran at a third of its speed for that second.
        self.send(worker, MasterPing(sent=time.monotonic()))

    def _on_heartbeat(self, identity: bytes, msg: Heartbeat, arrays: list[Buffer]) -> None:
        rtt = time.monotonic() - msg.echo if msg.echo else None
        if rtt is not None and not 0 <= rtt <= MAX_RTT:  # not an echo of our recent ping
            rtt = None
        worker = _name(identity)
        if msg.shuffle_bytes or worker in self.core.peers.shuffle:
            self.core.peers.shuffle[worker] = msg.shuffle_bytes
        if msg.rss:  # an agent that samples itself (older ones send no usage)
            self.core.peers.usage[worker] = (msg.cpu, msg.rss)
        self.core.apply(ev.WorkerSeen(worker, rtt))

    def _on_draining(self, identity: bytes, msg: Message, arrays: list[Buffer]) -> None:
        worker = _name(identity)
        log.info("worker %s is draining", worker)
        self.core.apply(ev.WorkerDraining(worker))

    def _on_disconnect(self, identity: bytes, msg: Disconnect, arrays: list[Buffer]) -> None:
        worker = _name(identity)
        log.info("worker %s disconnected, handing back %d shards", worker, len(msg.handback))
        self.core.peers.forget(worker)
        self.core.apply(ev.WorkerLeft(worker, tuple(msg.handback)))

    def _on_failed(self, identity: bytes, msg: ShardFailed, arrays: list[Buffer]) -> None:
        worker = _name(identity)
        error = msg.error.model_copy(update={"worker": worker})
        log.info(
            "shard %s/%d attempt %d failed on %s: %s %s",
            msg.job_id,
            msg.shard,
            msg.attempt,
            worker,
            error.kind,
            error.message,
        )
        more = _pairs(msg.more)
        event = ev.ShardFailed(
            worker, msg.job_id, msg.shard, msg.attempt, error, msg.duration, more
        )
        self._reports.append((event, None))

    def _on_task_output(self, identity: bytes, msg: TaskOutput, arrays: list[Buffer]) -> None:
        """Lines a watched job's task printed: on to the clients watching it."""
        data = self.core.data.get(msg.job_id)
        if data is not None and data.watchers:
            out = msg.model_copy(update={"worker": _name(identity)})
            for client in data.watchers:
                self.core.to_client(client, out)

    def _on_done(self, identity: bytes, msg: ShardDone, arrays: list[Buffer]) -> None:
        more = _pairs(msg.more)
        head = DoneHead(
            msg.job_id, msg.shard, msg.attempt, msg.duration, msg.payload, more, msg.output,
            msg.finished,
        )  # fmt: skip
        self._done(_name(identity), head, arrays)

    def _done(self, worker: str, msg: DoneHead, arrays: Sequence[Buffer]) -> None:
        """A shard's result, held for the brain (`report_all`); one too large, a failure."""
        size = len(msg.payload) + (sum(memoryview(a).nbytes for a in arrays) if arrays else 0)
        limit = self.core.settings.max_result_bytes
        more = msg.more
        if size > limit:  # refused as a failure that no retry can fix
            err = ErrorInfo(
                kind="bad_input",
                type="ResultTooLarge",
                worker=worker,
                retryable=False,
                message=f"shard {msg.shard} returned {size:,} bytes, above "
                f"max_result_bytes={limit:,}; use more shards or write the output "
                "to files",
            )
            failed = ev.ShardFailed(worker, msg.job_id, msg.shard, msg.attempt, err, 0.0, more)
            self._reports.append((failed, None))
            return
        event = ev.ShardSucceeded(
            worker, msg.job_id, msg.shard, msg.attempt, msg.duration, more, msg.output,
            msg.finished,
        )  # fmt: skip
        self._reports.append((event, (msg.payload, list(arrays))))


class DoneHead(NamedTuple):
    """A `done` message's fields, as the master uses them."""

    job_id: str
    shard: int
    attempt: int
    duration: float
    payload: bytes
    more: tuple[tuple[int, int], ...] = ()  # a batch's other shards: (shard, attempt)
    output: str = ""  # the tail of what it printed
    finished: float = 0.0  # wall-clock time it ended on the worker

    @classmethod
    def read(cls, frames: Sequence[Buffer]) -> DoneHead | None:
        """A single shard's result read without the pydantic decode (results are most of what
        workers send), or None when the message is anything else, or not exactly the shape
        `ShardDone` validates to (another kind, a batch, a field missing, extra or of another
        type): `decode` then takes it and names whatever is wrong."""
        try:
            raw = unpack_header(frames[0])
        except ProtocolError:
            return None
        if raw.get("kind") != "done" or not raw.keys() <= _DONE_KEYS or raw.get("more", []) != []:
            return None
        job_id, shard, attempt = raw.get("job_id"), raw.get("shard"), raw.get("attempt")
        duration, payload = raw.get("duration", 0.0), raw.get("payload", b"")
        output, finished = raw.get("output", ""), raw.get("finished", 0.0)
        if type(job_id) is not str or type(shard) is not int or type(attempt) is not int:
            return None
        if type(duration) not in (float, int) or type(payload) is not bytes:
            return None
        if type(output) is not str or type(finished) not in (float, int):
            return None
        return cls(job_id, shard, attempt, float(duration), payload, (), output, float(finished))


_DONE_KEYS = frozenset(ShardDone.model_fields)


def _name(identity: bytes) -> str:
    """A worker's name, as the brain and the logs know it: its id when printable ASCII (as our
    agents make them), else hex, so a hostile peer cannot write control characters into logs."""
    if identity.isascii() and identity.decode("ascii").isprintable():
        return identity.decode("ascii")
    return "0x" + identity.hex()


def _pairs(more: list[ShardAttempt]) -> tuple[tuple[int, int], ...]:
    """A batch's other shards as the brain's events carry them."""
    return tuple((m.shard, m.attempt) for m in more)
