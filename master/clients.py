"""The master's client API: one handler per request kind, each answering on the client socket."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from shardmill import __version__
from shardmill.errors import (
    InvalidTransition,
    JobSpecError,
    ProtocolError,
    SharedMemoryError,
    StateDirError,
)
from shardmill.master.brain import events as ev
from shardmill.master.brain.archive import JobSummary, newest_finished
from shardmill.master.brain.failures import telling_error
from shardmill.master.brain.transitions import ShardState
from shardmill.master.brain.views import worker_infos
from shardmill.master.core import Core, send, send_header, user_id
from shardmill.master.doors import ResultStreams, pickle_refusal
from shardmill.master.history import History
from shardmill.master.pipelines import PipelineRun
from shardmill.master.submit import admit, queue
from shardmill.wire import shm
from shardmill.wire.codec import Buffer, decode_checked, peek_req
from shardmill.wire.handshake import fingerprint
from shardmill.wire.keyring import Keyring
from shardmill.wire.protocol import (
    CLIENT_KINDS,
    CancelJob,
    EchoTasks,
    ErrorInfo,
    ErrorReply,
    JobInfo,
    JobList,
    JobResult,
    JobStatus,
    Message,
    MetricsText,
    PipelineInfo,
    PipelineQuery,
    PipelineStatus,
    Pong,
    PruneJobs,
    ResultQuery,
    StatusQuery,
    Submit,
    SubmitPipeline,
    Submitted,
    WatchOutput,
    WorkerList,
)

log = logging.getLogger(__name__)
Handler = Callable[[bytes, Any, list[Buffer]], None]


class ClientRequests:
    """Decodes each client request, answers it from the brain, and turns acts into events."""

    def __init__(self, core: Core, sock: zmq.Socket[bytes], keyring: Keyring | None) -> None:
        self.core = core
        self.sock = sock
        core.to_client = functools.partial(send, sock)  # a watched job's output, unasked
        self.keyring = keyring  # None without CURVE: every client may do everything
        self._owner = ""
        self.streams = ResultStreams(core, self._reply)  # results as they finish
        self.history = History(core)  # archived jobs' details, from the state dir
        self.handlers: dict[str, Handler] = {
            "submit": self._on_submit,
            "status": self._on_status,
            "jobs": self._on_jobs,
            "workers": self._on_workers,
            "result": self._on_result,
            "cancel": self._on_cancel,
            "client_ping": self._on_ping,
            "prune": self._on_prune,
            "submit_pipeline": self._on_submit_pipeline,
            "pipeline": self._on_pipeline,
            "watch_output": self._on_watch_output,
            "metrics": lambda identity, msg, arrays: self._reply(
                identity,
                MetricsText(
                    req=msg.req, text=self.core.metrics.exposition(self.core.brain).decode()
                ),
            ),
        }

    def _reply(self, identity: bytes, msg: Message, arrays: Sequence[Any] = ()) -> None:
        send(self.sock, identity, self._prepared(msg), arrays)

    def _prepared(self, msg: Message) -> Message:
        """The reply as sent: this master's epoch, owners by name."""
        if self.core.epoch:
            msg = msg.model_copy(update={"epoch": self.core.epoch})
        if self.keyring is not None:  # owners by name: one place for every reply of jobs
            if isinstance(msg, JobStatus | JobResult):
                msg = msg.model_copy(update={"job": self._named(msg.job)})
            elif isinstance(msg, JobList):
                msg = msg.model_copy(update={"jobs": [self._named(j) for j in msg.jobs]})
        return msg

    def _named(self, info: JobInfo) -> JobInfo:
        assert self.keyring is not None
        return info.model_copy(update={"owner": self.keyring.owner_name(info.owner)})

    def _may_manage(self, identity: bytes, req: int, job_ids: list[str]) -> bool:
        """Whether this client may cancel these jobs: its own, or any when it is an admin;
        otherwise answered so, naming the owner and the fix."""
        if self.keyring is None or self.keyring.is_admin(self._owner):
            return True
        brain = self.core.brain
        theirs = [j for j in job_ids if brain.owner_of(j) != self._owner]
        if not theirs:
            return True
        owner = self.keyring.owner_name(brain.owner_of(theirs[0])) or "no client (kept from before)"
        message = (
            f"job {theirs[0]} belongs to {owner}: a client may cancel only its own jobs, "
            "unless its public key is in the master's admins/ folder"
        )
        self._reply(identity, ErrorReply(req=req, code="forbidden", message=message))
        return False

    def on_frames(self, frames: list[Any]) -> None:
        """One request, answered: the per-message boundary of the client socket."""
        identity = bytes(frames[0].bytes)
        try:
            decoded = decode_checked(
                frames[1:],
                max_bytes=self.core.settings.max_message_bytes,
                kinds=CLIENT_KINDS,
                expected="a client request; is this a worker?",
            )
        except ProtocolError as e:
            log.warning("bad message from client %s: %s", identity.hex(), e)
            self._reply(
                identity, ErrorReply(req=peek_req(frames[1:]), code="protocol", message=str(e))
            )
            return
        msg = decoded.msg
        if _may_tell_of_merges(msg):
            self.core.checkpoint.commit()  # make them durable first
        # With CURVE, ZAP sets User-Id to the client's public key: quotas follow the key.
        self._owner = user_id(frames[-1])
        if self.keyring is not None and self.keyring.client(self._owner) is None:
            self._reply(identity, _revoked(msg, self._owner))  # connected before a SIGHUP
            return
        try:
            self.handlers[msg.kind](identity, msg, decoded.arrays)
        except InvalidTransition:
            raise
        except Exception as e:  # the per-message boundary: log, reply, keep serving everyone
            self._reply(identity, _error_reply(msg, e))

    def _on_submit(self, identity: bytes, msg: Submit, arrays: list[Buffer]) -> None:
        if refusal := pickle_refusal(self.keyring, self._owner, msg):
            self._reply(identity, ErrorReply(req=msg.req, code="forbidden", message=refusal))
            return
        try:
            job = admit(self.core, msg, arrays, self._owner)
        except StateDirError as e:
            log.error("job refused: %s", e)
            reply = ErrorReply(req=msg.req, code="state", message=f"job not accepted: {e}")
            self._reply(identity, reply)
            return
        if msg.echo:  # before its first task leaves: each goes out flagged to echo
            job.data.watchers.append(identity)
        if msg.wait:  # the caller named the job: its one answer is the result
            job.data.waiters.append((identity, msg.req))
        else:
            self._reply(identity, Submitted(req=msg.req, job_id=job.job_id))
        queue(self.core, job, self._owner)

    def _known_job(self, identity: bytes, req: int, job_id: str) -> bool:
        if self.core.brain.known(job_id):
            return True
        reply = ErrorReply(req=req, code="unknown_job", message=self.history.unknown(job_id))
        self._reply(identity, reply)
        return False

    def _on_watch_output(self, identity: bytes, msg: WatchOutput, arrays: list[Buffer]) -> None:
        """From now on the job's tasks send this client what they print; those running now
        are told too (their output so far included)."""
        if not self._known_job(identity, msg.req, msg.job_id):
            return
        data = self.core.data.get(msg.job_id)
        if data is not None and not self.core.brain.jobs[msg.job_id].finished:
            if identity not in data.watchers:
                data.watchers.append(identity)
            for worker in self.core.brain.workers:
                self.core.to_worker(worker, EchoTasks(job_id=msg.job_id))
        info = self.core.brain.job_info(msg.job_id, shards=False)
        self._reply(identity, JobStatus(req=msg.req, job=info))

    def _on_status(self, identity: bytes, msg: StatusQuery, arrays: list[Buffer]) -> None:
        if self._known_job(identity, msg.req, msg.job_id):
            info = self.history.info(msg.job_id, shards=msg.shards)
            self._reply(identity, JobStatus(req=msg.req, job=info))

    def _on_jobs(self, identity: bytes, msg: Any, arrays: list[Buffer]) -> None:
        """Every job; finished ones as plain data (JobSummary.listed), added to the dumped
        reply of the rest."""
        brain = self.core.brain
        runs = self.core.pipelines.runs.values() if self.core.pipelines else []
        pipelines = [self._named_run(r.info()) for r in runs]
        live = [brain.job_info(j) for j in brain.jobs]
        total = len(brain.archive) + sum(j.finished for j in brain.jobs.values())
        archived: Sequence[JobSummary] = list(brain.archive)
        if msg.finished is not None:  # the newest ones only
            live, archived = newest_finished(live, archived, msg.finished)
        reply = JobList(req=msg.req, jobs=live, pipelines=pipelines, finished_total=total)
        header = self._prepared(reply).model_dump(mode="python")
        finished = [s.listed() for s in archived]
        if self.keyring is not None:
            for info in finished:
                info["owner"] = self.keyring.owner_name(info["owner"])
        header["jobs"] = finished + header["jobs"]
        send_header(self.sock, identity, header)

    # ---- pipelines -----------------------------------------------------------------------------

    def _on_submit_pipeline(
        self, identity: bytes, msg: SubmitPipeline, arrays: list[Buffer]
    ) -> None:
        assert self.core.pipelines is not None
        run = self.core.pipelines.submit(msg, arrays, self._owner)
        self._reply(identity, Submitted(req=msg.req, job_id=run.pipeline_id))

    def _on_pipeline(self, identity: bytes, msg: PipelineQuery, arrays: list[Buffer]) -> None:
        run = self._known_run(identity, msg.req, msg.pipeline_id)
        if run is None:
            return
        if msg.wait and not run.finished:
            run.waiters.append((identity, msg.req))
            return
        self._pipeline_status(identity, msg.req, run, with_result=msg.wait)

    def _known_run(self, identity: bytes, req: int, pipeline_id: str) -> PipelineRun | None:
        run = self.core.pipelines.runs.get(pipeline_id) if self.core.pipelines else None
        if run is None:
            message = f"no pipeline {pipeline_id!r} on this master; list them: shardmill jobs"
            self._reply(identity, ErrorReply(req=req, code="unknown_job", message=message))
        return run

    def _pipeline_status(
        self, identity: bytes, req: int, run: PipelineRun, *, with_result: bool
    ) -> None:
        info = self._named_run(run.info())
        result = run.result if with_result and run.status == "done" else None
        if result is None:
            self._reply(identity, PipelineStatus(req=req, pipeline=info))
        else:
            reply = PipelineStatus(req=req, pipeline=info, result=result.data)
            self._reply(identity, reply, result.arrays)

    def answer_pipeline(self, run: PipelineRun) -> None:
        """An ended pipeline: everyone waiting for it gets its status and result."""
        waiters, run.waiters = run.waiters, []
        for identity, req in waiters:
            self._pipeline_status(identity, req, run, with_result=True)

    def _named_run(self, info: PipelineInfo) -> PipelineInfo:
        if self.keyring is None:
            return info
        return info.model_copy(update={"owner": self.keyring.owner_name(info.owner)})

    def _cancel_pipeline(self, identity: bytes, msg: CancelJob, run: PipelineRun) -> None:
        keyring = self.keyring
        if keyring is not None and not keyring.is_admin(self._owner) and run.owner != self._owner:
            message = (
                f"pipeline {run.pipeline_id} belongs to {keyring.owner_name(run.owner)}: "
                "a client may cancel only its own, unless its key is in the master's admins/"
            )
            self._reply(identity, ErrorReply(req=msg.req, code="forbidden", message=message))
            return
        assert self.core.pipelines is not None
        self.core.pipelines.cancel(run)
        self._pipeline_status(identity, msg.req, run, with_result=False)

    def _on_workers(self, identity: bytes, msg: Any, arrays: list[Buffer]) -> None:
        peers = self.core.peers
        infos = worker_infos(
            self.core.brain.workers.values(),
            peers.hello,
            time.monotonic(),
            shm_peers=peers.shares_memory,
            shuffle=peers.shuffle,
            usage=peers.usage,
        )
        self._reply(identity, WorkerList(req=msg.req, workers=infos))

    def _on_prune(self, identity: bytes, msg: PruneJobs, arrays: list[Buffer]) -> None:
        keep = self.core.waited_on()
        if self.keyring is not None and not self.keyring.is_admin(self._owner):
            brain = self.core.brain
            owners = [(j.job_id, j.owner) for j in [*brain.jobs.values(), *brain.archive]]
            others = {job_id for job_id, owner in owners if owner != self._owner}
            keep = frozenset(keep | others)  # a client prunes only its own jobs
        cmds = self.core.apply(ev.PruneRequested(msg.older_than, keep))
        pruned = [info for c in cmds if isinstance(c, ev.Pruned) for info in c.jobs]
        self._reply(identity, JobList(req=msg.req, jobs=pruned))

    def _on_result(self, identity: bytes, msg: ResultQuery, arrays: list[Buffer]) -> None:
        if not self._known_job(identity, msg.req, msg.job_id):
            return
        job = self.core.brain.jobs.get(msg.job_id)
        if msg.after is not None and job is not None:
            self.streams.query(identity, msg)
        elif job is None or job.finished:  # an archived job's stream gets the whole result
            self.reply_result(msg.job_id, identity, msg.req)
        elif msg.wait:
            self.core.data[msg.job_id].waiters.append((identity, msg.req))
        else:
            info = self.core.brain.job_info(msg.job_id)
            self._reply(identity, JobResult(req=msg.req, job=info))

    def _on_cancel(self, identity: bytes, msg: CancelJob, arrays: list[Buffer]) -> None:
        pipelines = self.core.pipelines.runs if self.core.pipelines else {}
        if msg.job_id in pipelines:
            self._cancel_pipeline(identity, msg, pipelines[msg.job_id])
            return
        if not self._known_job(identity, msg.req, msg.job_id):
            return
        if not self._may_manage(identity, msg.req, [msg.job_id]):
            return
        if msg.job_id in self.core.brain.jobs:  # an archived job ended long ago
            self.core.apply(ev.CancelRequested(msg.job_id))
        info = self.core.brain.job_info(msg.job_id)
        self._reply(identity, JobStatus(req=msg.req, job=info))

    def _on_ping(self, identity: bytes, msg: Any, arrays: list[Buffer]) -> None:
        reply = Pong(
            req=msg.req,
            version=__version__,
            workers=len(self.core.brain.workers),
            shared_memory=shm.probe_seen(msg.shm_probe),
            standby=self.core.standby,
        )
        self._reply(identity, reply)

    def reply_result(self, job_id: str, identity: bytes, req: int) -> None:
        """A finished job's answer: its result, or its failure with the shard that caused it."""
        data = self.core.data.get(job_id)
        info = self.core.brain.job_info(job_id)
        if data is not None:
            result, failure = data.result, self._failure(job_id)
        else:  # archived: read from the state dir
            result, failure = self.history.outcome(job_id)
        if result is not None and info.state == "done":
            msg = JobResult(req=req, job=info, parts=result.parts, part_arrays=result.part_arrays)
            self._reply(identity, msg, result.arrays)
        else:
            self._reply(identity, JobResult(req=req, job=info, failure=failure))

    def _failure(self, job_id: str) -> ErrorInfo | None:
        """The failed shard's telling error: what the task raised, if any attempt raised."""
        for shard in self.core.brain.jobs[job_id].shards:
            if shard.state is ShardState.FAILED and shard.history:
                return telling_error(shard.history)
        return None


def _error_reply(msg: Message, e: Exception) -> ErrorReply:
    """The answer to a request that raised: its code says what kind of problem it was."""
    req = getattr(msg, "req", 0)
    if isinstance(e, JobSpecError | ProtocolError):
        code = "shm" if isinstance(e, SharedMemoryError) else "protocol"
        code = "bad_spec" if isinstance(e, JobSpecError) else code
        return ErrorReply(req=req, code=code, message=str(e))
    if isinstance(e, StateDirError):  # not recorded; the master stops after this message
        log.error("%s request not recorded: %s", msg.kind, e)
        text = f"{msg.kind} not recorded, the master is stopping: {e}"
        return ErrorReply(req=req, code="state", message=text)
    log.error("error handling a %s request", msg.kind, exc_info=e)
    return ErrorReply(req=req, code="internal", message=f"master error: {e}")


def _may_tell_of_merges(msg: Message) -> bool:
    """Whether the answer may tell of merges still waiting for their group commit. A submit's
    does not; a waiting result query is answered at the job's end, which commits first."""
    return not isinstance(msg, Submit) and not (isinstance(msg, ResultQuery) and msg.wait)


def _revoked(msg: Message, user_id: str) -> ErrorReply:
    text = (
        f"this client's key (fingerprint {fingerprint(user_id.encode())}) is no longer in the "
        "master's clients/ folder: it was revoked; ask the master's operator for a key"
    )
    return ErrorReply(req=getattr(msg, "req", 0), code="auth", message=text)
