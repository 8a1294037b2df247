"""The master's client API: one handler per request kind, each answering on the client socket."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from shardmill import __version__, shm
from shardmill.codec import Buffer, decode_checked, peek_req
from shardmill.config import MasterSettings
from shardmill.datapaths import check_data_path
from shardmill.errors import (
    InvalidTransition,
    JobSpecError,
    ProtocolError,
    SharedMemoryError,
    StateDirError,
)
from shardmill.master import events as ev
from shardmill.master.checkpoint import Checkpointer
from shardmill.master.jobs import JobData, accept, new_job_id
from shardmill.master.model import ShardState
from shardmill.master.state import MasterState
from shardmill.master.workers_info import worker_infos
from shardmill.protocol import (
    CLIENT_KINDS,
    CancelJob,
    ErrorInfo,
    ErrorReply,
    JobList,
    JobResult,
    JobStatus,
    Message,
    Pong,
    PruneJobs,
    Ready,
    ResultQuery,
    StatusQuery,
    Submit,
    Submitted,
    WorkerList,
)

log = logging.getLogger(__name__)


class ClientRequests:
    """Mixed into MasterLoop: the client half of the loop, kept apart to stay readable."""

    state: MasterState
    jobs: dict[str, JobData]
    meta: dict[str, Ready]
    clients_sock: zmq.Socket[bytes]
    checkpoint: Checkpointer
    retention: float | None
    settings: MasterSettings
    segments: shm.Segments
    shares_memory: set[str]
    _owner: str = ""

    def _send(
        self, sock: zmq.Socket[bytes], identity: bytes, msg: Message, arrays: Sequence[Any] = ()
    ) -> None:
        raise NotImplementedError

    def _apply(self, event: ev.Event, result: tuple[bytes, list[Buffer]] | None = None) -> None:
        raise NotImplementedError

    def _client_handlers(self) -> dict[str, Callable[[bytes, Any, list[Buffer]], None]]:
        return {
            "submit": self._on_submit,
            "status": self._on_status,
            "jobs": self._on_jobs,
            "workers": self._on_workers,
            "result": self._on_result,
            "cancel": self._on_cancel,
            "client_ping": self._on_ping,
            "prune": self._on_prune,
        }

    # ---- client socket -------------------------------------------------------------------------

    def _on_client_frames(self, frames: list[Any]) -> None:
        identity = bytes(frames[0].bytes)
        try:
            decoded = decode_checked(
                frames[1:],
                max_bytes=self.settings.max_message_bytes,
                kinds=CLIENT_KINDS,
                expected="a client request; is this a worker?",
            )
            kind = decoded.msg.kind
        except ProtocolError as e:
            log.warning("bad message from client %s: %s", identity.hex(), e)
            reply = ErrorReply(req=peek_req(frames[1:]), code="protocol", message=str(e))
            self._send(self.clients_sock, identity, reply)
            return
        if _may_tell_of_merges(decoded.msg):
            self.checkpoint.commit()  # make them durable first
        # With CURVE, ZAP sets User-Id to the client's public key: quotas follow the key.
        self._owner = _user_id(frames[-1])
        try:
            self._client_handlers()[kind](identity, decoded.msg, decoded.arrays)
        except (JobSpecError, ProtocolError) as e:
            code = "bad_spec" if isinstance(e, JobSpecError) else "protocol"
            code = "shm" if isinstance(e, SharedMemoryError) else code
            req = getattr(decoded.msg, "req", 0)
            self._send(self.clients_sock, identity, ErrorReply(req=req, code=code, message=str(e)))
        except InvalidTransition:
            raise
        except StateDirError as e:  # not recorded; the master stops after this message
            log.error("%s request not recorded: %s", kind, e)
            req = getattr(decoded.msg, "req", 0)
            text = f"{kind} not recorded, the master is stopping: {e}"
            self._send(self.clients_sock, identity, ErrorReply(req=req, code="state", message=text))
        except Exception as e:  # the per-message boundary: log, reply, keep serving everyone
            log.error("error handling a %s request", kind, exc_info=True)
            req = getattr(decoded.msg, "req", 0)
            reply = ErrorReply(req=req, code="internal", message=f"master error: {e}")
            self._send(self.clients_sock, identity, reply)

    def _on_submit(self, identity: bytes, msg: Submit, arrays: list[Buffer]) -> None:
        limits = self.settings
        # The dataset, and row_stats' output (which the master creates), stay in the data roots.
        paths = {
            name: check_data_path(path, limits.data_roots)
            for name in ("dataset", "output")
            if (path := getattr(msg.spec, name))
        }
        if paths:
            msg = msg.model_copy(update={"spec": msg.spec.model_copy(update=paths)})
        queued = sum(
            1
            for j in self.state.active.values()
            if not j.finished and self.jobs[j.job_id].owner == self._owner
        )
        if queued >= limits.max_queued_jobs:
            raise JobSpecError(
                f"this client already has {queued} unfinished jobs, the limit "
                "(max_queued_jobs); wait for some to finish or cancel them"
            )
        if msg.shm:  # big arrays the client left in shared memory: map them, copy nothing
            arrays = self.segments.attach(msg.shm, arrays)
        data = accept(msg, arrays)
        if len(data.descriptors) > limits.max_shards:
            raise JobSpecError(
                f"shards: the job would have {len(data.descriptors):,} shards, "
                f"above max_shards={limits.max_shards:,}; use bigger shards"
            )
        data.owner = self._owner
        job_id = msg.job_id or new_job_id()
        if job_id in self.jobs:
            raise JobSpecError(f"job_id: a job {job_id!r} exists already; pick another id")
        try:
            self.checkpoint.job_added(job_id, data, spec=msg.spec, submitted_at=time.time())
        except StateDirError as e:
            log.error("job refused: %s", e)
            reply = ErrorReply(req=msg.req, code="state", message=f"job not accepted: {e}")
            self._send(self.clients_sock, identity, reply)
            return
        self.jobs[job_id] = data
        data.segments = self.segments.adopt([ref.segment for ref in msg.shm])
        log.info("job %s accepted: op %s, %d shards", job_id, msg.spec.op, len(data.descriptors))
        if msg.wait:  # the caller named the job: its one answer is the result
            data.waiters.append((identity, msg.req))
        else:
            self._send(self.clients_sock, identity, Submitted(req=msg.req, job_id=job_id))
        self._apply(ev.JobAdded(job_id, msg.spec, len(data.descriptors), data.batchable))

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
        infos = worker_infos(self.state, self.meta, time.monotonic(), shm_peers=self.shares_memory)
        self._send(self.clients_sock, identity, WorkerList(req=msg.req, workers=infos))

    def _on_prune(self, identity: bytes, msg: PruneJobs, arrays: list[Buffer]) -> None:
        pruned = self.prune(msg.older_than)
        self._send(self.clients_sock, identity, JobList(req=msg.req, jobs=pruned))

    def prune(self, older_than: float | None) -> list[Any]:
        """Forget finished jobs that ended more than `older_than` seconds ago (all if None)."""
        cutoff = time.monotonic() - (older_than or 0.0)
        gone = [
            j
            for j, job in self.state.jobs.items()
            if job.finished
            and job.finished_at is not None
            and job.finished_at <= cutoff
            and not self.jobs[j].waiters
        ]
        infos = [self.state.job_info(j) for j in gone]
        self.checkpoint.forget(gone)
        for j in gone:
            self.state.forget_job(j)
            del self.jobs[j]
        if gone:
            log.info("pruned %d finished job(s)", len(gone))
        return infos

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
        reply = Pong(
            req=msg.req,
            version=__version__,
            workers=len(self.state.workers),
            shared_memory=shm.probe_seen(msg.shm_probe),
        )
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


def _may_tell_of_merges(msg: Message) -> bool:
    """Whether the answer may tell of merges still waiting for their group commit. A submit's
    does not; a waiting result query is answered at the job's end, which commits first."""
    return not isinstance(msg, Submit) and not (isinstance(msg, ResultQuery) and msg.wait)


def _user_id(frame: Any) -> str:
    """The peer's CURVE public key as ZAP set it; empty on insecure sockets."""
    try:
        return str(frame.get("User-Id") or "")
    except (zmq.ZMQError, AttributeError):
        return ""
