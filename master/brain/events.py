"""Events the master's state machine consumes and commands it emits. Plain frozen data."""

from __future__ import annotations

from dataclasses import dataclass

from shardmill.protocol import ErrorInfo, JobSpec, Lease

# ---- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerReady:
    worker: str
    slots: int
    held: tuple[Lease, ...] = ()
    prefetch: int = 0  # shards it takes beyond its slots, queued behind running ones


@dataclass(frozen=True)
class WorkerSeen:
    worker: str


@dataclass(frozen=True)
class WorkerDraining:
    worker: str


@dataclass(frozen=True)
class WorkerLeft:
    """A clean DISCONNECT; leases in `handback` return to the queue uncharged."""

    worker: str
    handback: tuple[Lease, ...] = ()


@dataclass(frozen=True)
class ShardSucceeded:
    worker: str
    job_id: str
    shard: int
    attempt: int
    duration: float = 0.0
    more: tuple[tuple[int, int], ...] = ()  # (shard, attempt) folded into the same partial


@dataclass(frozen=True)
class ShardFailed:
    worker: str
    job_id: str
    shard: int
    attempt: int
    error: ErrorInfo
    duration: float = 0.0
    more: tuple[tuple[int, int], ...] = ()  # the batch's other shards: run again, uncharged


@dataclass(frozen=True)
class JobAdded:
    job_id: str
    spec: JobSpec
    shards: int
    batchable: bool = False  # shards read by reference whose partials fold: may go in batches


@dataclass(frozen=True)
class CancelRequested:
    job_id: str


@dataclass(frozen=True)
class JobBroken:
    """The loop could not merge or finalize a job's results; the job fails with `message`."""

    job_id: str
    message: str


@dataclass(frozen=True)
class Tick:
    """Time passed: expire silent workers, release shards whose retry backoff is over."""


Event = (
    WorkerReady
    | WorkerSeen
    | WorkerDraining
    | WorkerLeft
    | ShardSucceeded
    | ShardFailed
    | JobAdded
    | CancelRequested
    | JobBroken
    | Tick
)

# ---- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendTask:
    worker: str
    job_id: str
    shard: int
    attempt: int
    more: tuple[tuple[int, int], ...] = ()  # (shard, attempt) batched behind it


@dataclass(frozen=True)
class MergeShard:
    """Merge the result in hand: the first valid result for (job, shard), exactly once."""

    job_id: str
    shard: int
    more: tuple[int, ...] = ()  # shards folded into the same partial


@dataclass(frozen=True)
class FinalizeJob:
    job_id: str
    missing: tuple[int, ...] = ()


@dataclass(frozen=True)
class JobEnded:
    """The job failed or was cancelled; waiting clients get `error`."""

    job_id: str
    state: str
    error: str


@dataclass(frozen=True)
class CancelOnWorker:
    worker: str
    job_id: str


@dataclass(frozen=True)
class AskReregister:
    worker: str


@dataclass(frozen=True)
class WorkerExpired:
    worker: str
    requeued: int
    silence: float


@dataclass(frozen=True)
class DropDuplicate:
    job_id: str
    shard: int
    worker: str


Command = (
    SendTask
    | MergeShard
    | FinalizeJob
    | JobEnded
    | CancelOnWorker
    | AskReregister
    | WorkerExpired
    | DropDuplicate
)
