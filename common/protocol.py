"""Every message on the wire: frozen pydantic models in one discriminated union.

Values (task arguments, results) never live in these models: they ride in `payload`
(msgpack made by `codec.pack_value`) plus NumPy array frames, so the master can forward them
without decoding. Evolve by appending fields with defaults; never reuse a `kind` tag.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter

PROTOCOL_VERSION = 1

FunctionRef = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description='a function named as "pkg.module:function"',
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Msg(_Model):
    v: int = PROTOCOL_VERSION


# ---- shared value types -------------------------------------------------------------------


class ErrorInfo(_Model):
    """A failure as data: what went wrong on which worker, and whether a retry can help."""

    kind: Literal["error", "crash", "timeout", "unknown_function", "bad_input", "lost", "cancelled"]
    type: str = ""
    message: str = ""
    traceback: str = ""
    exit_code: int | None = None
    signal: str | None = None
    worker: str = ""
    retryable: bool = True


Column = int | str  # a column index, or a CSV header name

DatasetFormat = Literal["npy", "npy_dir", "csv", "parquet", "synthetic", "value"]
Strategy = Literal["rows", "columns", "hash", "range"]
ColumnType = Literal["int64", "float64", "str"]  # CSV column types


class SyntheticSpec(_Model):
    """A seeded generator: each block of rows is a pure function of (seed, block index)."""

    rows: int = Field(ge=0, le=10**12)
    cols: int = Field(default=4, ge=1, le=10_000)
    seed: int = Field(default=0, ge=0)
    keys: int | None = Field(
        default=None, ge=1, description="when set, column 0 holds integer keys 0..keys-1"
    )


class JobSpec(_Model):
    """What to run. `op="map"` calls `function` on each argument tuple; other ops read `dataset`."""

    op: str = Field(min_length=1, description='"map" or a built-in op such as "column_stats"')
    function: FunctionRef | None = None
    dataset: str | None = Field(default=None, description="path to a .npy file, as workers see it")
    shards: int | None = Field(default=None, ge=1, le=1_000_000, description="number of shards")
    max_attempts: int = Field(default=3, ge=1, le=100)
    task_timeout: float | None = Field(default=None, gt=0)
    allow_failures: int = Field(default=0, ge=0)
    name: str = ""
    # ---- datasets, sharding strategies and op options (see shardmill.plan) ----
    format: DatasetFormat | None = Field(default=None, description="None: from the path")
    strategy: Strategy = "rows"
    rows_per_shard: int | None = Field(default=None, ge=1)
    target_bytes: int | None = Field(default=None, ge=1, description="bytes per shard")
    columns: list[Column] | None = Field(default=None, description="the columns the op reads")
    column_groups: list[list[Column]] | None = Field(default=None, min_length=1)
    key: Column | None = Field(default=None, description="key column: hash, range, groupby")
    boundaries: list[float] | None = Field(default=None, description="range split points")
    sample_size: int = Field(default=10_000, ge=1, le=10_000_000)
    bins: int = Field(default=10, ge=1, le=1_000_000)
    value_range: tuple[float, float] | None = Field(default=None, description="histogram")
    nan_aware: bool = False
    output: str | None = Field(default=None, description="row_stats: the .npy to write")
    synthetic: SyntheticSpec | None = None
    header: bool = Field(default=True, description="CSV: the first line names the columns")
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    dtypes: dict[str, ColumnType] = Field(
        default_factory=dict, description="CSV column types (default: inferred from a sample)"
    )
    options: dict[str, JsonValue] = Field(default_factory=dict, description="for user ops")


class RowRange(_Model):
    kind: Literal["rows"] = "rows"
    path: str
    start: int
    stop: int


class MapChunk(_Model):
    kind: Literal["map"] = "map"
    function: FunctionRef
    count: int


class NpyPiece(_Model):
    path: str
    start: int = Field(ge=0)
    stop: int = Field(ge=0)


class NpySource(_Model):
    """Row ranges of one or more .npy files, read in this order (a directory's parts)."""

    kind: Literal["npy"] = "npy"
    pieces: list[NpyPiece]


class CsvSource(_Model):
    """The lines of a CSV file that begin in bytes [start, stop), parsed with a fixed schema."""

    kind: Literal["csv"] = "csv"
    path: str
    start: int = Field(ge=0)
    stop: int = Field(ge=0)
    names: list[str]
    dtypes: list[ColumnType]
    delimiter: str = ","


class ParquetSource(_Model):
    kind: Literal["parquet"] = "parquet"
    path: str
    row_groups: list[int]


class SyntheticSource(_Model):
    kind: Literal["synthetic"] = "synthetic"
    spec: SyntheticSpec
    start: int = Field(ge=0)
    stop: int = Field(ge=0)


class ValueSource(_Model):
    """The rows travel by value in the task's payload."""

    kind: Literal["value"] = "value"


Source = Annotated[
    NpySource | CsvSource | ParquetSource | SyntheticSource | ValueSource,
    Field(discriminator="kind"),
]


class Bucket(_Model):
    """Keep only the rows whose key lands in bucket `index` of `count` (hash or range)."""

    how: Literal["hash", "range"]
    index: int = Field(ge=0)
    count: int = Field(ge=1)
    boundaries: list[float] = []


class OpOptions(_Model):
    """What an op needs besides the rows; `params` is the spec's `options`, for user ops."""

    nan_aware: bool = False
    bins: int = 10
    value_range: tuple[float, float] | None = None
    output: str | None = None
    params: dict[str, JsonValue] = {}


class ScanShard(_Model):
    """One shard of a dataset op: where to read, which columns, which bucket, which options."""

    kind: Literal["scan"] = "scan"
    source: Source
    first_row: int = Field(default=0, description="global index of the source's first row")
    columns: list[int] | None = Field(default=None, description="value columns; None: all")
    key: int | None = None
    bucket: Bucket | None = None
    options: OpOptions = OpOptions()


Descriptor = Annotated[RowRange | MapChunk | ScanShard, Field(discriminator="kind")]


class ShmRef(_Model):
    """Array frame `frame` of this message lives in shared memory: `segment`, at `offset`."""

    frame: int = Field(ge=0)
    segment: str = Field(max_length=64)
    offset: int = Field(ge=0)
    size: int = Field(ge=0)


class Lease(_Model):
    job_id: str
    shard: int
    attempt: int


class AttemptInfo(_Model):
    attempt: int
    worker: str
    started: float
    ended: float | None = None
    outcome: str = "running"
    error: ErrorInfo | None = None


class ShardInfo(_Model):
    index: int
    state: str
    attempts: int
    worker: str | None = None
    merged: int = 0
    history: list[AttemptInfo] = []


class JobInfo(_Model):
    job_id: str
    name: str
    op: str
    state: str
    shards_total: int
    shards_done: int
    shards_failed: int
    shards_running: int
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    duplicates: int = 0
    missing_shards: list[int] = []
    shards: list[ShardInfo] | None = None


class WorkerInfo(_Model):
    worker_id: str
    hostname: str
    pid: int
    slots: int
    busy: int
    heartbeat_age: float
    queued: int = 0  # short shards waiting on the worker behind running ones (its prefetch)
    shards_done: int
    shards_failed: int
    version: str
    modules: list[str]
    draining: bool = False
    shared_memory: bool = False  # maps by-value inputs from the master's /dev/shm


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
    prefetch: int = Field(0, ge=0, le=4096)  # shards it queues beyond its slots


class Heartbeat(_Msg):
    kind: Literal["heartbeat"] = "heartbeat"


class ShardAttempt(_Model):
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


class ShardFailed(_Msg):
    kind: Literal["failed"] = "failed"
    job_id: str
    shard: int
    attempt: int
    duration: float = 0.0
    error: ErrorInfo
    more: list[ShardAttempt] = []  # a batch's other shards: not charged, they run again


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


class MasterPing(_Msg):
    kind: Literal["ping"] = "ping"


class Reregister(_Msg):
    kind: Literal["reregister"] = "reregister"


class BatchShard(_Model):
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

    def more_attempts(self) -> list[ShardAttempt]:
        """The batch's other shards, as a reply names them."""
        return [ShardAttempt(shard=m.shard, attempt=m.attempt) for m in self.more]


class CancelTasks(_Msg):
    kind: Literal["cancel_tasks"] = "cancel_tasks"
    job_id: str


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


class StatusQuery(_Request):
    kind: Literal["status"] = "status"
    job_id: str
    shards: bool = False


class JobsQuery(_Request):
    kind: Literal["jobs"] = "jobs"


class WorkersQuery(_Request):
    kind: Literal["workers"] = "workers"


class ResultQuery(_Request):
    kind: Literal["result"] = "result"
    job_id: str
    wait: bool = True


class CancelJob(_Request):
    kind: Literal["cancel"] = "cancel"
    job_id: str


class PruneJobs(_Request):
    """Forget finished jobs that ended more than `older_than` seconds ago (all when None)."""

    kind: Literal["prune"] = "prune"
    older_than: float | None = Field(default=None, ge=0)


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


class WorkerList(_Reply):
    kind: Literal["worker_list"] = "worker_list"
    workers: list[WorkerInfo]


class JobResult(_Reply):
    kind: Literal["job_result"] = "job_result"
    job: JobInfo
    parts: list[bytes] = []
    part_arrays: list[int] = []
    failure: ErrorInfo | None = None


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
    | Draining
    | Disconnect
    | Welcome
    | MasterPing
    | Reregister
    | Task
    | CancelTasks
    | Submit
    | StatusQuery
    | JobsQuery
    | WorkersQuery
    | ResultQuery
    | CancelJob
    | PruneJobs
    | Ping
    | Submitted
    | JobStatus
    | JobList
    | WorkerList
    | JobResult
    | Pong
    | ErrorReply,
    Field(discriminator="kind"),
]

MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)

WORKER_KINDS = frozenset({"ready", "heartbeat", "done", "failed", "draining", "disconnect"})
CLIENT_KINDS = frozenset(
    {"submit", "status", "jobs", "workers", "result", "cancel", "client_ping", "prune"}
)
