"""The master's one poll loop: owns both ROUTER sockets, feeds the state machine, runs commands."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from shardmill import __version__, exitcodes, shm
from shardmill.codec import Buffer, decode_checked, encode
from shardmill.config import MasterSettings
from shardmill.errors import InvalidTransition, ProtocolError, ShardmillError, StateDirError
from shardmill.master import events as ev
from shardmill.master.checkpoint import Checkpointer
from shardmill.master.clients import ClientRequests
from shardmill.master.jobs import JobData
from shardmill.master.merge import MapMerger
from shardmill.master.model import JobState
from shardmill.master.state import MasterState, Timing
from shardmill.protocol import (
    WORKER_KINDS,
    CancelTasks,
    Disconnect,
    ErrorInfo,
    ErrorReply,
    MasterPing,
    Message,
    Ready,
    Reregister,
    ShardAttempt,
    ShardDone,
    ShardFailed,
    Welcome,
)
from shardmill.security import Security

log = logging.getLogger(__name__)


class MasterLoop(ClientRequests):
    """Binds the worker and client ports and serves until stopped."""

    def __init__(self, settings: MasterSettings) -> None:
        self.settings = settings
        self.state = MasterState(
            Timing(
                heartbeat_interval=settings.heartbeat_interval,
                heartbeat_liveness=settings.heartbeat_liveness,
                retry_backoff=settings.retry_backoff,
                retry_backoff_max=settings.retry_backoff_max,
                prefetch_below=settings.prefetch_below,
            )
        )
        self.meta: dict[str, Ready] = {}
        self.shares_memory: set[str] = set()  # workers that can open those segments
        self.retention = settings.job_retention
        # Open the state dir first: a locked or corrupt one must stop us before we bind ports.
        self.checkpoint = Checkpointer(settings.state_dir)
        self.state.wall_offset = time.time() - time.monotonic()
        self.jobs: dict[str, JobData] = self.checkpoint.restore(self.state, time.monotonic())
        self.segments = _segments(settings)  # after the state dir's lock is ours
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.security = Security.resolve(settings.keys, settings.insecure, "master")
        self.auth = self.security.authenticator(self.ctx)  # ZAP must run before we bind
        self.workers_sock = self._router(settings.port)
        self.clients_sock = self._router(settings.client_port)
        self.worker_handlers: dict[str, Callable[[bytes, Message, list[Buffer]], None]] = {
            "ready": self._on_ready,
            "heartbeat": self._on_worker_event,
            "draining": self._on_worker_event,
            "disconnect": self._on_worker_event,
            "done": self._on_done,
            "failed": self._on_worker_event,
        }
        self._next_beat = 0.0
        self._next_prune = 0.0

    def _router(self, port: int) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A worker that reconnects keeps its identity: the new connection takes it over.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # The hard cut (the peer is disconnected) sits above the soft limit, which gets a
        # clear error reply instead.
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.settings.max_message_bytes)
        self.security.server(sock)
        host = self.settings.host
        if port == 0:
            sock.bind_to_random_port(f"tcp://{host}")
        else:
            sock.bind(f"tcp://{host}:{port}")
        return sock

    def endpoints(self) -> dict[str, str]:
        ep_w = self.workers_sock.getsockopt_string(zmq.LAST_ENDPOINT)
        ep_c = self.clients_sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return {"workers": ep_w, "clients": ep_c}

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT; announce the bound endpoints on stdout as a JSON line."""
        # Signals arrive on a wake-up pipe the poll loop reads, never as an exception that
        # could fire (and be swallowed) inside library code.
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        print(json.dumps({"event": "listening", "pid": _pid(), **self.endpoints()}), flush=True)
        log.info("master listening %s", self.endpoints())
        poller = zmq.Poller()
        poller.register(self.workers_sock, zmq.POLLIN)
        poller.register(self.clients_sock, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll(self._poll_timeout_ms()))
                if wake_r in ready:
                    log.info("master stopping (signal %d)", os.read(wake_r, 64)[0])
                    break
                if self.workers_sock in ready:
                    self._drain(self.workers_sock, self._on_worker_frames)
                if self.clients_sock in ready:
                    self._drain(self.clients_sock, self._on_client_frames)
                self._timers()
                self.checkpoint.commit(time.monotonic())  # grouped, see Checkpointer.commit
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            self.close()

    def close(self) -> None:
        self.workers_sock.close(linger=0)
        self.clients_sock.close(linger=0)
        try:
            self.checkpoint.close()
        finally:
            self.segments.close()  # a resumed job's inputs come from the state dir, not these
            if self.auth is not None:
                self.auth.stop()

    def _drain(self, sock: zmq.Socket[bytes], handle: Callable[[list[Any]], None]) -> None:
        for _ in range(1000):  # bounded, so one busy socket cannot starve the other or timers
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            handle(frames)
            # A handler's boundary may have caught a failed write (a refused submit is answered
            # "state"): stop before the next message is answered from state not on disk.
            self.checkpoint.check()

    def _poll_timeout_ms(self) -> int:
        now = time.monotonic()
        deadline = min(
            self._next_beat,
            self.state.next_deadline() or self._next_beat,
            self.checkpoint.flush_deadline() or self._next_beat,
        )
        return max(0, int((deadline - now) * 1000) + 1)

    def _timers(self) -> None:
        now = time.monotonic()
        deadline = self.state.next_deadline()
        if deadline is not None and deadline <= now:
            self._apply(ev.Tick())
        self.segments.expire(now)
        self.segments.drop_unowned()  # a refused submit's mappings (its client deletes the file)
        if self.retention is not None and now >= self._next_prune:
            self._next_prune = now + 60.0
            self.prune(self.retention)
        if now >= self._next_beat:
            self._next_beat = now + self.settings.heartbeat_interval
            for worker in list(self.state.workers):
                self._send_worker(worker, MasterPing())

    # ---- worker socket -------------------------------------------------------------------------

    def _on_worker_frames(self, frames: list[Any]) -> None:
        identity = bytes(frames[0].bytes)
        try:
            decoded = decode_checked(
                frames[1:],
                max_bytes=self.settings.max_message_bytes,
                kinds=WORKER_KINDS,
                expected="a worker message; is this a client?",
            )
            self.worker_handlers[decoded.msg.kind](identity, decoded.msg, decoded.arrays)
        except ProtocolError as e:
            log.warning("bad message from worker %s: %s", _text(identity), e)
            self._send(self.workers_sock, identity, ErrorReply(code="protocol", message=str(e)))
        except (InvalidTransition, StateDirError):
            raise  # a broken invariant or a failed checkpoint write: stop rather than go on
        except Exception as e:  # the per-message boundary: log, reply, keep serving everyone
            log.error("error handling a worker message from %s", _text(identity), exc_info=True)
            self._send(self.workers_sock, identity, ErrorReply(code="internal", message=str(e)))

    def _on_ready(self, identity: bytes, msg: Message, arrays: list[Buffer]) -> None:
        assert isinstance(msg, Ready)
        worker = _text(identity)
        if msg.version != __version__:
            text = (
                f"worker {worker} runs shardmill {msg.version}, this master runs "
                f"{__version__}; run the same version on the master and every worker"
            )
            log.warning("refused: %s", text)
            self._send(self.workers_sock, identity, ErrorReply(code="version", message=text))
            return
        self.meta[worker] = msg
        if shm.probe_seen(msg.shm_probe):
            self.shares_memory.add(worker)
            shm.remove(msg.shm_probe)  # seen: a worker killed before our WELCOME leaves nothing
        else:
            self.shares_memory.discard(worker)
        log.info(
            "worker %s ready: %s pid %d, %d slots, imports %s, shared memory %s",
            worker,
            msg.hostname,
            msg.pid,
            msg.slots,
            msg.modules,
            "yes" if worker in self.shares_memory else "no",
        )
        timing = self.state.timing
        welcome = Welcome(
            heartbeat_interval=timing.heartbeat_interval,
            heartbeat_liveness=timing.heartbeat_liveness,
        )
        self._send(self.workers_sock, identity, welcome)
        self._apply(ev.WorkerReady(worker, msg.slots, tuple(msg.held), msg.prefetch))

    def _on_worker_event(self, identity: bytes, msg: Message, arrays: list[Buffer]) -> None:
        worker = _text(identity)
        event: ev.Event
        if isinstance(msg, ShardFailed):
            error = msg.error.model_copy(update={"worker": worker})
            event = ev.ShardFailed(
                worker, msg.job_id, msg.shard, msg.attempt, error, msg.duration, _pairs(msg.more)
            )
            log.info(
                "shard %s/%d attempt %d failed on %s: %s %s",
                msg.job_id,
                msg.shard,
                msg.attempt,
                worker,
                error.kind,
                error.message,
            )
        elif isinstance(msg, Disconnect):
            log.info("worker %s disconnected, handing back %d shards", worker, len(msg.handback))
            self.meta.pop(worker, None)
            event = ev.WorkerLeft(worker, tuple(msg.handback))
        elif msg.kind == "draining":
            log.info("worker %s is draining", worker)
            event = ev.WorkerDraining(worker)
        else:
            event = ev.WorkerSeen(worker)
        self._apply(event)

    def _on_done(self, identity: bytes, msg: Message, arrays: list[Buffer]) -> None:
        assert isinstance(msg, ShardDone)
        worker = _text(identity)
        size = len(msg.payload) + sum(memoryview(a).nbytes for a in arrays)
        limit = self.settings.max_result_bytes
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
            more = _pairs(msg.more)
            self._apply(ev.ShardFailed(worker, msg.job_id, msg.shard, msg.attempt, err, 0.0, more))
            return
        more = _pairs(msg.more)
        event = ev.ShardSucceeded(worker, msg.job_id, msg.shard, msg.attempt, msg.duration, more)
        self._apply(event, result=(msg.payload, arrays))

    # ---- commands ------------------------------------------------------------------------------

    def _apply(self, event: ev.Event, result: tuple[bytes, list[Buffer]] | None = None) -> None:
        pending = [event]
        while pending:
            cmds = self.state.handle(pending.pop(0), time.monotonic())
            for cmd in cmds:
                follow_up = self._execute(cmd, result)
                if follow_up is not None:
                    pending.append(follow_up)

    def _execute(
        self, cmd: ev.Command, result: tuple[bytes, list[Buffer]] | None
    ) -> ev.Event | None:
        match cmd:
            case ev.SendTask(worker=w, job_id=j, shard=s, attempt=a, more=more):
                self._send_task(w, j, s, a, more)
            case ev.MergeShard(job_id=j, shard=s, more=more):
                assert result is not None, "a merge needs the result in hand"
                return self._merge(j, s, more, result)
            case ev.FinalizeJob(job_id=j, missing=missing):
                return self._finalize(j, missing)
            case ev.JobEnded(job_id=j, state=st, error=err):
                log.info("job %s %s: %s", j, st, err.splitlines()[0])
                self._finish(j)
            case ev.CancelOnWorker(worker=w, job_id=j):
                self._send_worker(w, CancelTasks(job_id=j))
            case ev.AskReregister(worker=w):
                self._send_worker(w, Reregister())
            case ev.WorkerExpired(worker=w, requeued=n, silence=t):
                self.meta.pop(w, None)
                log.warning(
                    "worker %s expired after %.1f s of silence; %d shards requeued", w, t, n
                )
            case ev.DropDuplicate(job_id=j, shard=s, worker=w):
                log.info("job %s shard %d: duplicate result from %s dropped", j, s, w)
        return None

    def _merge(
        self, j: str, s: int, more: tuple[int, ...], result: tuple[bytes, list[Buffer]]
    ) -> ev.Event | None:
        """Fold a shard's (or a batch's) partial in, and checkpoint each shard it covers."""
        try:
            self.jobs[j].merger.add(s, *result, more=more)
            offset = self.state.wall_offset
            for index in (s, *more):
                shard = self.state.jobs[j].shards[index]
                self.checkpoint.shard_merged(j, shard, self.jobs[j], result, offset=offset)
        except (ShardmillError, ValueError, TypeError, KeyError) as e:
            log.warning("job %s: shard %d result cannot be merged: %s", j, s, e)
            return ev.JobBroken(j, f"shard {s} returned a result that cannot be merged: {e}")
        return None

    def _send_task(
        self,
        worker: str,
        job_id: str,
        shard: int,
        attempt: int,
        more: tuple[tuple[int, int], ...] = (),
    ) -> None:
        spec, data = self.state.jobs[job_id].spec, self.jobs[job_id]
        msg, arrays = data.task(
            job_id, shard, attempt, op=spec.op, timeout=spec.task_timeout, more=more
        )
        if data.segments and worker in self.shares_memory:  # it maps the pages itself
            arrays, refs = self.segments.refs(arrays)
            msg = msg.model_copy(update={"shm": refs})
        self._send_worker(worker, msg, arrays)

    def _finalize(self, job_id: str, missing: tuple[int, ...]) -> ev.Event | None:
        data = self.jobs[job_id]
        try:
            data.result = data.merger.final(missing)
        except (ShardmillError, ValueError, TypeError, KeyError) as e:
            log.warning("job %s cannot be finalized: %s", job_id, e)
            return ev.JobBroken(job_id, f"the merged result cannot be finalized: {e}")
        log.info("job %s done", job_id)
        self._finish(job_id)
        return None

    def _finish(self, job_id: str) -> None:
        data = self.jobs[job_id]
        job = self.state.jobs[job_id]
        offset = self.state.wall_offset
        self.checkpoint.job_ended(  # durable before any client hears of it
            job_id,
            job.shards,
            state=str(job.state),
            error=job.error,
            finished_at=(job.finished_at or time.monotonic()) + offset,
            result=data.result if job.state is JobState.DONE else None,
            offset=offset,
            map_job=isinstance(data.merger, MapMerger),
        )
        data.release_inputs()
        waiters, data.waiters = data.waiters, []
        for identity, req in waiters:
            self._reply_result(job_id, identity, req)
        self.segments.release(data.segments, time.monotonic())  # after the answers: it may unlink
        data.segments = []

    # ---- sending -------------------------------------------------------------------------------

    def _send_worker(self, worker: str, msg: Message, arrays: Sequence[Any] = ()) -> None:
        self._send(self.workers_sock, worker.encode(), msg, arrays)

    def _send(
        self, sock: zmq.Socket[bytes], identity: bytes, msg: Message, arrays: Sequence[Any] = ()
    ) -> None:
        try:
            sock.send_multipart([identity, *encode(msg, arrays)], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as e:  # peer gone or its queue is full: heartbeats will tell
            log.debug("cannot send %s to %s: %s", msg.kind, identity.hex(), e)


def _segments(settings: MasterSettings) -> shm.Segments:
    """By-value inputs clients left in /dev/shm, and a pool of used segments for reuse."""
    segments = shm.Segments(settings.shm_pool_bytes, settings.shm_pool_idle)
    if settings.state_dir is not None:  # we hold its lock: leftovers are a killed master's
        path = str(settings.state_dir.resolve()).encode()
        segments.tag = hashlib.sha256(path).hexdigest()[:8]
        if gone := segments.remove_leftovers():
            log.info("removed %d shared-memory segments a previous master left", len(gone))
    return segments


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _pid() -> int:
    return os.getpid()


def _pairs(more: list[ShardAttempt]) -> tuple[tuple[int, int], ...]:
    """A batch's other shards as the state machine's events carry them."""
    return tuple((m.shard, m.attempt) for m in more)


def serve(settings: MasterSettings) -> int:
    """Run a master until stopped; returns the process exit code."""
    # A file size limit (ulimit -f) must fail a write with EFBIG, which the store reports,
    # rather than kill us with SIGXFSZ before we can say why.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    loop = MasterLoop(settings)
    try:
        loop.run()  # its last commit, at close, may fail too
    except StateDirError as e:
        # Crash-only, as PostgreSQL PANICs on a failed fsync: nothing uncommitted was answered,
        # the sockets are closed, and the next master resumes every job from the last commit.
        log.error("%s", e)
        return exitcodes.STATE
    return exitcodes.OK


__all__ = ["MasterLoop", "serve"]
