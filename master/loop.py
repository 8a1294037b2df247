"""The master's one poll loop: owns both ROUTER sockets, feeds the state machine, runs commands."""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from shardmill import __version__
from shardmill.codec import Buffer, decode, encode
from shardmill.config import MasterSettings
from shardmill.errors import InvalidTransition, JobSpecError, ProtocolError, ShardmillError
from shardmill.master import events as ev
from shardmill.master.jobs import JobData, accept, new_job_id
from shardmill.master.model import ShardState
from shardmill.master.state import MasterState, Timing
from shardmill.protocol import (
    CLIENT_KINDS,
    WORKER_KINDS,
    CancelJob,
    CancelTasks,
    Disconnect,
    ErrorInfo,
    ErrorReply,
    JobList,
    JobResult,
    JobStatus,
    MasterPing,
    Message,
    Pong,
    Ready,
    Reregister,
    ResultQuery,
    ShardDone,
    ShardFailed,
    StatusQuery,
    Submit,
    Submitted,
    Welcome,
    WorkerInfo,
    WorkerList,
)

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 2**31


class _Stop(BaseException):
    """Raised from a signal handler to leave the poll loop cleanly."""


class MasterLoop:
    """Binds the worker and client ports and serves until stopped."""

    def __init__(self, settings: MasterSettings) -> None:
        self.settings = settings
        self.state = MasterState(
            Timing(
                heartbeat_interval=settings.heartbeat_interval,
                heartbeat_liveness=settings.heartbeat_liveness,
                retry_backoff=settings.retry_backoff,
                retry_backoff_max=settings.retry_backoff_max,
            )
        )
        self.jobs: dict[str, JobData] = {}
        self.meta: dict[str, Ready] = {}
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
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
        self.client_handlers: dict[str, Callable[[bytes, Any, list[Buffer]], None]] = {
            "submit": self._on_submit,
            "status": self._on_status,
            "jobs": self._on_jobs,
            "workers": self._on_workers,
            "result": self._on_result,
            "cancel": self._on_cancel,
            "client_ping": self._on_ping,
        }
        self._next_beat = 0.0

    def _router(self, port: int) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A worker that reconnects keeps its identity: the new connection takes it over.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
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
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _raise_stop)
        print(json.dumps({"event": "listening", "pid": _pid(), **self.endpoints()}), flush=True)
        log.info("master listening %s", self.endpoints())
        poller = zmq.Poller()
        poller.register(self.workers_sock, zmq.POLLIN)
        poller.register(self.clients_sock, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll(self._poll_timeout_ms()))
                if self.workers_sock in ready:
                    self._drain(self.workers_sock, self._on_worker_frames)
                if self.clients_sock in ready:
                    self._drain(self.clients_sock, self._on_client_frames)
                self._timers()
        except _Stop:
            log.info("master stopping")
        finally:
            self.close()

    def close(self) -> None:
        self.workers_sock.close(linger=0)
        self.clients_sock.close(linger=0)

    def _drain(self, sock: zmq.Socket[bytes], handle: Callable[[list[Any]], None]) -> None:
        for _ in range(1000):  # bounded, so one busy socket cannot starve the other or timers
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            handle(frames)

    def _poll_timeout_ms(self) -> int:
        now = time.monotonic()
        deadline = min(self._next_beat, self.state.next_deadline() or self._next_beat)
        return max(0, int((deadline - now) * 1000) + 1)

    def _timers(self) -> None:
        now = time.monotonic()
        deadline = self.state.next_deadline()
        if deadline is not None and deadline <= now:
            self._apply(ev.Tick())
        if now >= self._next_beat:
            self._next_beat = now + self.settings.heartbeat_interval
            for worker in list(self.state.workers):
                self._send_worker(worker, MasterPing())

    # ---- worker socket -------------------------------------------------------------------------

    def _on_worker_frames(self, frames: list[Any]) -> None:
        identity = bytes(frames[0].bytes)
        try:
            decoded = decode(frames[1:])
            kind = decoded.msg.kind
            if kind not in WORKER_KINDS:
                raise ProtocolError(f"{kind!r} is not a worker message; is this a client?")
            self.worker_handlers[kind](identity, decoded.msg, decoded.arrays)
        except ProtocolError as e:
            log.warning("bad message from worker %s: %s", _text(identity), e)
            self._send(self.workers_sock, identity, ErrorReply(code="protocol", message=str(e)))
        except InvalidTransition:
            raise  # a broken invariant: crash loudly rather than merge wrongly
        except Exception as e:  # the per-message boundary: log, reply, keep serving everyone
            log.error("error handling a worker message from %s", _text(identity), exc_info=True)
            self._send(self.workers_sock, identity, ErrorReply(code="internal", message=str(e)))

    def _on_ready(self, identity: bytes, msg: Message, arrays: list[Buffer]) -> None:
        assert isinstance(msg, Ready)
        worker = _text(identity)
        self.meta[worker] = msg
        log.info(
            "worker %s ready: %s pid %d, %d slots, imports %s",
            worker,
            msg.hostname,
            msg.pid,
            msg.slots,
            msg.modules,
        )
        timing = self.state.timing
        welcome = Welcome(
            heartbeat_interval=timing.heartbeat_interval,
            heartbeat_liveness=timing.heartbeat_liveness,
        )
        self._send(self.workers_sock, identity, welcome)
        self._apply(ev.WorkerReady(worker, msg.slots, tuple(msg.held)))

    def _on_worker_event(self, identity: bytes, msg: Message, arrays: list[Buffer]) -> None:
        worker = _text(identity)
        event: ev.Event
        if isinstance(msg, ShardFailed):
            error = msg.error.model_copy(update={"worker": worker})
            event = ev.ShardFailed(worker, msg.job_id, msg.shard, msg.attempt, error, msg.duration)
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
        event = ev.ShardSucceeded(_text(identity), msg.job_id, msg.shard, msg.attempt, msg.duration)
        self._apply(event, result=(msg.payload, arrays))

    # ---- client socket -------------------------------------------------------------------------

    def _on_client_frames(self, frames: list[Any]) -> None:
        identity = bytes(frames[0].bytes)
        try:
            decoded = decode(frames[1:])
            kind = decoded.msg.kind
            if kind not in CLIENT_KINDS:
                raise ProtocolError(f"{kind!r} is not a client request; is this a worker?")
        except ProtocolError as e:
            log.warning("bad message from client %s: %s", identity.hex(), e)
            self._send(self.clients_sock, identity, ErrorReply(code="protocol", message=str(e)))
            return
        try:
            self.client_handlers[kind](identity, decoded.msg, decoded.arrays)
        except (JobSpecError, ProtocolError) as e:
            code = "bad_spec" if isinstance(e, JobSpecError) else "protocol"
            req = getattr(decoded.msg, "req", 0)
            self._send(self.clients_sock, identity, ErrorReply(req=req, code=code, message=str(e)))
        except InvalidTransition:
            raise
        except Exception as e:  # the per-message boundary: log, reply, keep serving everyone
            log.error("error handling a %s request", kind, exc_info=True)
            req = getattr(decoded.msg, "req", 0)
            reply = ErrorReply(req=req, code="internal", message=f"master error: {e}")
            self._send(self.clients_sock, identity, reply)

    def _on_submit(self, identity: bytes, msg: Submit, arrays: list[Buffer]) -> None:
        data = accept(msg, arrays)
        job_id = new_job_id()
        self.jobs[job_id] = data
        log.info("job %s accepted: op %s, %d shards", job_id, msg.spec.op, len(data.descriptors))
        self._send(self.clients_sock, identity, Submitted(req=msg.req, job_id=job_id))
        self._apply(ev.JobAdded(job_id, msg.spec, len(data.descriptors)))

    def _known_job(self, identity: bytes, req: int, job_id: str) -> bool:
        if job_id in self.jobs:
            return True
        reply = ErrorReply(
            req=req,
            code="unknown_job",
            message=f"no job {job_id!r} on this master; list them: shardmill jobs",
        )
        self._send(self.clients_sock, identity, reply)
        return False

    def _on_status(self, identity: bytes, msg: StatusQuery, arrays: list[Buffer]) -> None:
        if self._known_job(identity, msg.req, msg.job_id):
            info = self.state.job_info(msg.job_id, shards=msg.shards)
            self._send(self.clients_sock, identity, JobStatus(req=msg.req, job=info))

    def _on_jobs(self, identity: bytes, msg: Any, arrays: list[Buffer]) -> None:
        infos = [self.state.job_info(j) for j in self.state.jobs]
        self._send(self.clients_sock, identity, JobList(req=msg.req, jobs=infos))

    def _on_workers(self, identity: bytes, msg: Any, arrays: list[Buffer]) -> None:
        now = time.monotonic()
        infos = []
        for w in self.state.workers.values():
            meta = self.meta.get(w.worker_id)
            infos.append(
                WorkerInfo(
                    worker_id=w.worker_id,
                    hostname=meta.hostname if meta else "?",
                    pid=meta.pid if meta else 0,
                    slots=w.slots,
                    busy=len(w.leases),
                    heartbeat_age=round(now - w.last_seen, 3),
                    shards_done=w.done,
                    shards_failed=w.failed,
                    version=meta.version if meta else "?",
                    modules=list(meta.modules) if meta else [],
                    draining=w.draining,
                )
            )
        self._send(self.clients_sock, identity, WorkerList(req=msg.req, workers=infos))

    def _on_result(self, identity: bytes, msg: ResultQuery, arrays: list[Buffer]) -> None:
        if not self._known_job(identity, msg.req, msg.job_id):
            return
        job = self.state.jobs[msg.job_id]
        if job.finished:
            self._reply_result(msg.job_id, identity, msg.req)
        elif msg.wait:
            self.jobs[msg.job_id].waiters.append((identity, msg.req))
        else:
            info = self.state.job_info(msg.job_id)
            self._send(self.clients_sock, identity, JobResult(req=msg.req, job=info))

    def _on_cancel(self, identity: bytes, msg: CancelJob, arrays: list[Buffer]) -> None:
        if not self._known_job(identity, msg.req, msg.job_id):
            return
        self._apply(ev.CancelRequested(msg.job_id))
        info = self.state.job_info(msg.job_id)
        self._send(self.clients_sock, identity, JobStatus(req=msg.req, job=info))

    def _on_ping(self, identity: bytes, msg: Any, arrays: list[Buffer]) -> None:
        reply = Pong(req=msg.req, version=__version__, workers=len(self.state.workers))
        self._send(self.clients_sock, identity, reply)

    def _reply_result(self, job_id: str, identity: bytes, req: int) -> None:
        data = self.jobs[job_id]
        info = self.state.job_info(job_id)
        if data.result is not None and info.state == "done":
            res = data.result
            msg = JobResult(req=req, job=info, parts=res.parts, part_arrays=res.part_arrays)
            self._send(self.clients_sock, identity, msg, res.arrays)
        else:
            failure = self._failure(job_id)
            self._send(self.clients_sock, identity, JobResult(req=req, job=info, failure=failure))

    def _failure(self, job_id: str) -> ErrorInfo | None:
        for shard in self.state.jobs[job_id].shards:
            if shard.state is ShardState.FAILED and shard.history:
                return shard.history[-1].error
        return None

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
            case ev.SendTask(worker=w, job_id=j, shard=s, attempt=a):
                spec = self.state.jobs[j].spec
                msg, arrays = self.jobs[j].task(j, s, a, op=spec.op, timeout=spec.task_timeout)
                self._send_worker(w, msg, arrays)
            case ev.MergeShard(job_id=j, shard=s):
                assert result is not None, "a merge needs the result in hand"
                try:
                    self.jobs[j].merger.add(s, *result)
                except (ShardmillError, ValueError, TypeError, KeyError) as e:
                    log.warning("job %s: shard %d result cannot be merged: %s", j, s, e)
                    return ev.JobBroken(
                        j, f"shard {s} returned a result that cannot be merged: {e}"
                    )
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
        data.release_inputs()
        waiters, data.waiters = data.waiters, []
        for identity, req in waiters:
            self._reply_result(job_id, identity, req)

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


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop()


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _pid() -> int:
    import os

    return os.getpid()


def serve(settings: MasterSettings) -> int:
    """Run a master until stopped; returns the process exit code."""
    loop = MasterLoop(settings)
    loop.run()
    return 0


__all__ = ["MasterLoop", "serve"]
