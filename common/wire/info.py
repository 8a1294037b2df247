"""The values messages carry: errors, leases, and the job, stage, pipeline and worker views.

Split from `protocol` (which re-exports every name) so each stays readable; evolve the same
way, by appending fields with defaults.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shardmill.wire.spec import Frozen


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
    # Wall-clock time the worker started running it (0: queued there, not started): a master
    # that restarted meanwhile puts the execution in the shard's story from its true start.
    started: float = 0.0


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
    # Second executions of merged shards, their results dropped: the attempts whose outcome
    # is "duplicate" in its shards' stories (a batch's result counts each of its shards).
    duplicates: int = 0
    attempts_failed: int = 0  # failed attempts so far, lost ones included
    shards_retrying: int = 0  # shards with a failed attempt, not ended yet
    lost_workers: list[str] = []  # workers that died holding one of its shards
    last_failure: str | None = None  # the latest failed attempt, as one line
    missing_shards: list[int] = []
    shards: list[ShardInfo] | None = None
    # Copies of a merged execution's own result that came again, dropped: a worker resends
    # what it sent lately when it reconnects or a restarted master asks it to register again
    # (not executions: in no story, and not in `duplicates`). Each copy counts.
    resent: int = 0
    restarts: list[float] = []  # wall-clock times the master restarted while the job ran

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
    edge_budget: int = 0  # bytes its output may hold waiting for the next stage (0: no bound)
    edge_bytes: int = 0  # bytes of its output waiting now (and estimated for shards running)
    edge_peak: int = 0  # the most that waited at once
    waves: int = 0  # times the next stage absorbed a wave of its outputs early


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
    cpu: float | None = None  # percent of one core, agent and children (None: not reported)
    rss: int | None = None  # bytes of memory, agent and children, as of its last heartbeat
