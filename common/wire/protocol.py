"""Every message on the wire: frozen pydantic models in one discriminated union.

Values (task arguments, results) never live in these models: they ride in `payload` (msgpack
made by `codec.pack_value`) plus NumPy array frames, so the master forwards them undecoded.
Evolve by appending fields with defaults; never reuse a `kind` tag. Several messages between
master and workers may travel as one bundle (`codec.bundle`): framing, not a message."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from shardmill.wire.info import (  # re-exported: the values messages carry
    AttemptInfo as AttemptInfo,
    ErrorInfo as ErrorInfo,
    JobInfo as JobInfo,
    Lease as Lease,
    PipelineInfo as PipelineInfo,
    ShardInfo as ShardInfo,
    ShmRef as ShmRef,
    StageInfo as StageInfo,
    WorkerInfo as WorkerInfo,
)
from shardmill.wire.spec import (
    Descriptor,
    Frozen,
    JobSpec,
)

PROTOCOL_VERSION = 1


class _Msg(Frozen):
    v: int = PROTOCOL_VERSION
    epoch: int = 0  # the sending master's term (docs/standby.md): peers refuse a lower one


# ---- worker -> master ------------------------------------------------------------------------


class Ready(_Msg):
    kind: Literal["ready"] = "ready"
    slots: int = Field(ge=1, le=4096)
    hostname: str
    pid: int
    version: str
    modules: list[str] = []
    held: list[Lease] = []
    shm_probe: str = ""  # a /dev/shm file the master looks for: do we share memory?
    # The most shards it queues beyond its slots; the master sizes the window below it.
    prefetch: int = Field(0, ge=0, le=4096)


class Heartbeat(_Msg):
    kind: Literal["heartbeat"] = "heartbeat"
    echo: float = 0.0  # a MasterPing's `sent`, returned at once: the master's round-trip clock
    shuffle_bytes: int = Field(0, ge=0)  # pipelines' map outputs it holds on disk now
    cpu: float = Field(0.0, ge=0)  # percent of one core, the agent and its children (sampled)
    rss: int = Field(0, ge=0)  # bytes of memory, the agent and its children


class ShardAttempt(Frozen):
    shard: int = Field(ge=0)
    attempt: int = Field(ge=1)


class ShardDone(_Msg):
    kind: Literal["done"] = "done"
    job_id: str
    shard: int
    attempt: int
    duration: float = 0.0
    payload: bytes = b""
    more: list[ShardAttempt] = []  # a batch's other shards, folded into the same partial
    output: str = ""  # the tail of what it printed, stdout and stderr
    finished: float = 0.0  # wall-clock time it ended on the worker (a resent copy keeps it)


class ShardFailed(_Msg):
    kind: Literal["failed"] = "failed"
    job_id: str
    shard: int
    attempt: int
    duration: float = 0.0
    error: ErrorInfo
    more: list[ShardAttempt] = []  # a batch's other shards: not charged, they run again


class TaskOutput(_Msg):
    """Lines a watched job's task printed, as it runs: worker -> master -> watching clients."""

    kind: Literal["task_output"] = "task_output"
    job_id: str
    shard: int
    attempt: int
    text: str
    worker: str = ""  # filled in by the master


class Draining(_Msg):
    kind: Literal["draining"] = "draining"


class Disconnect(_Msg):
    kind: Literal["disconnect"] = "disconnect"
    handback: list[Lease] = []


# ---- master -> worker ------------------------------------------------------------------------


class Welcome(_Msg):
    kind: Literal["welcome"] = "welcome"
    heartbeat_interval: float
    heartbeat_liveness: int
    # The largest message the master reads from a worker: a bigger result is failed by the
    # worker itself (the master's socket would cut the connection, and a resend would loop).
    max_message_bytes: int = 256 * 2**20


class MasterPing(_Msg):
    kind: Literal["ping"] = "ping"
    sent: float = 0.0  # the master's clock; the worker's next Heartbeat echoes it


class Reregister(_Msg):
    kind: Literal["reregister"] = "reregister"


class BatchShard(Frozen):
    """One more shard in a task's batch (short shards of a dataset op, read by reference)."""

    shard: int = Field(ge=0)
    attempt: int = Field(ge=1)
    descriptor: Descriptor


class Task(_Msg):
    kind: Literal["task"] = "task"
    job_id: str
    shard: int
    attempt: int
    op: str
    descriptor: Descriptor
    timeout: float | None = None
    payload: bytes = b""
    shm: list[ShmRef] = []  # array frames the worker maps from shared memory
    more: list[BatchShard] = []  # more shards of the job, run after this one, folded with it
    echo: bool = False  # a client watches the job's output: send what it prints as it runs

    def more_attempts(self) -> list[ShardAttempt]:
        """The batch's other shards, as a reply names them."""
        return [ShardAttempt(shard=m.shard, attempt=m.attempt) for m in self.more]


class EchoTasks(_Msg):
    """A client now watches the job's output: its tasks running here send what they print."""

    kind: Literal["echo_tasks"] = "echo_tasks"
    job_id: str


class CancelTasks(_Msg):
    kind: Literal["cancel_tasks"] = "cancel_tasks"
    job_id: str
    shards: list[int] = []  # only these (a backup race lost); empty: every shard of the job


# ---- client -> master ------------------------------------------------------------------------


class _Request(_Msg):
    req: int = 0


class Submit(_Request):
    kind: Literal["submit"] = "submit"
    spec: JobSpec
    parts: list[bytes] = []
    part_counts: list[int] = []
    part_arrays: list[int] = []
    wait: bool = False  # answer with the JobResult (same req) when the job ends: one round trip
    job_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    shm: list[ShmRef] = []  # array frames written to shared memory (client on the master's host)
    echo: bool = False  # send this client what the job's tasks print as they run


class StatusQuery(_Request):
    kind: Literal["status"] = "status"
    job_id: str
    shards: bool = False


class JobsQuery(_Request):
    kind: Literal["jobs"] = "jobs"
    finished: int | None = Field(None, ge=0)  # only the N last finished (and every running)


class WorkersQuery(_Request):
    kind: Literal["workers"] = "workers"


class MetricsQuery(_Request):
    kind: Literal["metrics"] = "metrics"


class ResultQuery(_Request):
    kind: Literal["result"] = "result"
    job_id: str
    wait: bool = True
    after: int | None = Field(None, ge=0)  # a stream: the results merged after the first `after`
    hold: float = Field(1.0, ge=0, le=30)  # a stream's answer waits at most this for news


class CancelJob(_Request):
    kind: Literal["cancel"] = "cancel"
    job_id: str


class WatchOutput(_Request):
    """Send this client what the job's tasks print as they run (TaskOutput), until it ends."""

    kind: Literal["watch_output"] = "watch_output"
    job_id: str


class PruneJobs(_Request):
    """Forget finished jobs that ended more than `older_than` seconds ago (all when None)."""

    kind: Literal["prune"] = "prune"
    older_than: float | None = Field(default=None, ge=0)


class SubmitPipeline(_Request):
    """A pipeline's steps (shardmill.pipeline), packed by `codec.pack_value` (tables sent by
    value ride as array frames); the master plans and drives its stages."""

    kind: Literal["submit_pipeline"] = "submit_pipeline"
    steps: bytes
    name: str = ""
    fetch_timeout: float = Field(10.0, gt=0, le=3600)
    max_attempts: int = Field(3, ge=1, le=100)
    edge_budget: int | None = Field(None, ge=0)  # bytes between two stages; None: the master's


class PipelineQuery(_Request):
    """A pipeline's status; with `wait`, the answer comes when it ends, with its result."""

    kind: Literal["pipeline"] = "pipeline"
    pipeline_id: str
    wait: bool = False


class Ping(_Request):
    kind: Literal["client_ping"] = "client_ping"
    shm_probe: str = ""  # a /dev/shm file the master looks for: do we share memory?


# ---- master -> client ------------------------------------------------------------------------


class _Reply(_Msg):
    req: int = 0


class Submitted(_Reply):
    kind: Literal["submitted"] = "submitted"
    job_id: str


class JobStatus(_Reply):
    kind: Literal["job_status"] = "job_status"
    job: JobInfo


class JobList(_Reply):
    kind: Literal["job_list"] = "job_list"
    jobs: list[JobInfo]
    pipelines: list[PipelineInfo] = []
    finished_total: int = 0  # finished jobs the master holds, listed or not


class PipelineStatus(_Reply):
    kind: Literal["pipeline_status"] = "pipeline_status"
    pipeline: PipelineInfo
    result: bytes = b""  # when it ended done and a waiter asked: packed, arrays as frames


class WorkerList(_Reply):
    kind: Literal["worker_list"] = "worker_list"
    workers: list[WorkerInfo]


class JobResult(_Reply):
    kind: Literal["job_result"] = "job_result"
    job: JobInfo
    parts: list[bytes] = []
    part_arrays: list[int] = []
    failure: ErrorInfo | None = None
    first_items: list[int] = []  # a stream's answer: each part's first item's index
    next: int = 0  # a stream's cursor: ask after this many next time
    run: str = ""  # the master's run: another one (a restart) counts from 0 again


class MetricsText(_Reply):
    """The master's Prometheus metrics in the text exposition format."""

    kind: Literal["metrics_text"] = "metrics_text"
    text: str


class Pong(_Reply):
    kind: Literal["pong"] = "pong"
    version: str
    workers: int
    shared_memory: bool = False  # the master saw the ping's probe file
    standby: str = ""  # "in sync: NAME" or "alone: WHY" (docs/standby.md); "" without one


class ErrorReply(_Reply):
    """Sent on either socket when a message is rejected; `code` is machine-readable."""

    kind: Literal["error"] = "error"
    code: str
    message: str


Message = Annotated[
    Ready
    | Heartbeat
    | ShardDone
    | ShardFailed
    | TaskOutput
    | Draining
    | Disconnect
    | Welcome
    | MasterPing
    | Reregister
    | Task
    | CancelTasks
    | EchoTasks
    | Submit
    | StatusQuery
    | JobsQuery
    | WorkersQuery
    | MetricsQuery
    | ResultQuery
    | CancelJob
    | PruneJobs
    | SubmitPipeline
    | PipelineQuery
    | WatchOutput
    | Ping
    | Submitted
    | JobStatus
    | JobList
    | WorkerList
    | JobResult
    | PipelineStatus
    | Pong
    | MetricsText
    | ErrorReply,
    Field(discriminator="kind"),
]

MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)

WORKER_KINDS = frozenset(
    {"ready", "heartbeat", "done", "failed", "draining", "disconnect", "task_output"}
)
CLIENT_KINDS = frozenset(
    {
        "submit",
        "status",
        "jobs",
        "workers",
        "result",
        "cancel",
        "client_ping",
        "prune",
        "metrics",
        "submit_pipeline",
        "pipeline",
        "watch_output",
    }
)
