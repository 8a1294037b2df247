"""Every message on the wire: frozen pydantic models in one discriminated union.

Values (task arguments, results) never live in these models: they ride in `payload`
(msgpack made by `codec.pack_value`) plus NumPy array frames, so the master can forward them
without decoding. Evolve by appending fields with defaults; never reuse a `kind` tag.
Between the master and its workers several messages may travel as one bundle (kind
"bundle", see `codec.bundle`): framing, not a message of its own.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from shardmill.wire.spec import (
    Descriptor,
    Frozen,
    JobSpec,
)

PROTOCOL_VERSION = 1


class _Msg(Frozen):
    v: int = PROTOCOL_VERSION


# ---- shared value types -------------------------------------------------------------------


class ErrorInfo(Frozen):
    """A failure as data: what went wrong on which worker, and whether a retry can help."""

    kind: Literal["error", "crash", "timeout", "unknown_function", "bad_input", "lost", "cancelled"]
    type: str = ""
    message: str = ""
    traceback: str = ""
    exit_code: int | None = None
    signal: str | None = None
    worker: str = ""
    retryable: bool = True
    output: str = ""  # the tail of what the attempt printed (stdout and stderr) before it failed
    code_file: str = ""  # the function's or op's module file, as the failing worker had it,
    code_sha256: str = ""  # its hash (replay names a change since),
    code_version: str = ""  # and its __version__, when it has one
    input_sha256: str = ""  # a dataset shard's bytes as the worker read them (.npy, CSV)


class ShmRef(Frozen):
    """Array frame `frame` of this message lives in shared memory: `segment`, at `offset`."""

    frame: int = Field(ge=0)
    segment: str = Field(max_length=64)
    offset: int = Field(ge=0)
    size: int = Field(ge=0)


class Lease(Frozen):
    job_id: str
    shard: int
    attempt: int


class AttemptInfo(Frozen):
    attempt: int
    worker: str
    started: float
    ended: float | None = None
    outcome: str = "running"
    error: ErrorInfo | None = None
    ran: float | None = None  # seconds the worker ran it; started..ended also holds its queueing
    backup: bool = False  # a speculative second attempt, started while the first still ran
    output: str = ""  # the tail of what it printed, stdout and stderr (a failure's too)


class ShardInfo(Frozen):
    index: int
    state: str
    attempts: int
    worker: str | None = None
    merged: int = 0
    history: list[AttemptInfo] = []


class JobInfo(Frozen):
    job_id: str
    name: str
    op: str
    state: str
    owner: str = ""  # the submitting client's name (its key file's stem); "" without CURVE
    shards_total: int
    shards_done: int
    shards_failed: int
    shards_running: int
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    duplicates: int = 0
    attempts_failed: int = 0  # failed attempts so far, lost ones included
    shards_retrying: int = 0  # shards with a failed attempt, not ended yet
    lost_workers: list[str] = []  # workers that died holding one of its shards
    last_failure: str | None = None  # the latest failed attempt, as one line
    missing_shards: list[int] = []
    shards: list[ShardInfo] | None = None

    def __str__(self) -> str:
        """One line for people: `job.progress()` printed in a REPL or a script."""
        counts = f"{self.shards_done}/{self.shards_total} shards done"
        counts += f", {self.shards_failed} failed, {self.shards_running} running"
        end = f", {self.finished_at - self.submitted_at:.2f} s" if self.finished_at else ""
        return f"job {self.job_id} ({self.op}) {self.state}: {counts}{end}"

    def __repr__(self) -> str:
        return f"<JobInfo {self}>"


class StageInfo(Frozen):
    """One stage of a pipeline, as `status` shows it."""

    index: int
    label: str
    shards: int
    done: int = 0
    jobs: list[str] = []  # the jobs its shards ran in, first to last
    bytes_shuffled: int = 0  # written to the workers' shuffle directories (spilled to disk)
    runs: int = 0  # files of rows written: more than one a shard when one passed its budget
    bytes_fetched: int = 0
    rows: int = 0
    recomputed: list[int] = []  # shards run again: their outputs were lost with a worker
    waiting: str = ""  # why it has not started, or why it runs again
    holders: list[str] = []  # per shard, the worker address holding its output ("": none)


class PipelineInfo(Frozen):
    pipeline_id: str
    name: str = ""
    owner: str = ""
    state: str  # running, done, failed, cancelled
    submitted_at: float
    finished_at: float | None = None
    error: str | None = None
    running_job: str | None = None
    stages: list[StageInfo] = []
    story: list[str] = []

    def __str__(self) -> str:
        done = sum(s.done for s in self.stages)
        total = sum(s.shards for s in self.stages)
        return f"pipeline {self.pipeline_id} {self.state}: {done}/{total} stage shards done"


class WorkerInfo(Frozen):
    worker_id: str
    hostname: str
    pid: int
    slots: int
    busy: int
    heartbeat_age: float
    queued: int = 0  # short shards waiting on the worker behind running ones (its prefetch)
    rtt: float | None = None  # seconds, the master's last measured round trip to it
    window: int = 0  # short shards it may queue now: covers a round trip of them, capped
    shards_done: int
    shards_failed: int
    version: str
    modules: list[str]
    draining: bool = False
    shared_memory: bool = False  # maps by-value inputs from the master's /dev/shm
    shuffle_bytes: int = 0  # pipelines' map outputs it holds on disk (its last heartbeat's)


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


class WorkersQuery(_Request):
    kind: Literal["workers"] = "workers"


class MetricsQuery(_Request):
    kind: Literal["metrics"] = "metrics"


class ResultQuery(_Request):
    kind: Literal["result"] = "result"
    job_id: str
    wait: bool = True


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


class MetricsText(_Reply):
    """The master's Prometheus metrics in the text exposition format."""

    kind: Literal["metrics_text"] = "metrics_text"
    text: str


class Pong(_Reply):
    kind: Literal["pong"] = "pong"
    version: str
    workers: int
    shared_memory: bool = False  # the master saw the ping's probe file


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
