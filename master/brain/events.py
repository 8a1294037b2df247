"""Events the master's state machine consumes and commands it emits. Plain frozen data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shardmill.master.brain.transitions import JobState, ShardState
from shardmill.wire.protocol import AttemptInfo, ErrorInfo, JobInfo, Lease
from shardmill.wire.spec import JobSpec

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
    rtt: float | None = None  # seconds from a ping to its echo, when this beat was one


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
    output: str = ""  # the tail of what it printed
    finished: float = 0.0  # wall-clock time it ended on the worker (0: unknown)


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
class SubmitRequested:
    """A client asks for a job of `shards` shards: admitted, or refused with the reason."""

    job_id: str
    shards: int
    owner: str = ""


@dataclass(frozen=True)
class JobAdded:
    """An admitted job, recorded in the state dir: its shards join the queue."""

    job_id: str
    spec: JobSpec
    shards: int
    batchable: bool = False  # shards read by reference whose partials fold: may go in batches
    owner: str = ""
    submitted_at: float | None = None  # the time the state dir recorded (default: now)


@dataclass(frozen=True)
class JobRestored:
    """A job read back from the state dir after a restart; times are wall-clock seconds.
    Shards not in `settled` were not finished: they queue again (or stay cancelled)."""

    job_id: str
    spec: JobSpec
    shards: int
    submitted_at: float
    state: JobState
    settled: Mapping[int, tuple[ShardState, tuple[AttemptInfo, ...]]]
    error: str | None = None
    finished_at: float | None = None
    started_at: float | None = None
    restarts: tuple[float, ...] = ()  # the master's earlier starts while it ran (wall clock)
    attempts_given: int = 0  # the highest attempt number any earlier master gave its shards
    resent: int = 0  # JobInfo.resent so far


@dataclass(frozen=True)
class RestoreDone:
    """Every stored job is back: hold the queue while workers re-register with what they run."""


@dataclass(frozen=True)
class JobArchived:
    """A finished job was recorded and everyone waiting was answered: it shrinks to its
    summary (`summarize`: its details are in the state dir), or is kept whole within the
    budget (`size`: its result's bytes)."""

    job_id: str
    size: int = 0
    summarize: bool = True


@dataclass(frozen=True)
class SummariesRestored:
    """Finished jobs' summaries read back from the state dir after a restart, packed
    (`JobSummary.pack`, msgpack): the archive decodes them when first asked for."""

    packed: tuple[bytes, ...]


@dataclass(frozen=True)
class PruneRequested:
    """Forget finished jobs that ended at least `older_than` seconds ago (every one if None),
    except those in `keep` (a client still waits for their result)."""

    older_than: float | None
    keep: frozenset[str] = frozenset()


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
    | SubmitRequested
    | JobAdded
    | JobRestored
    | RestoreDone
    | JobArchived
    | SummariesRestored
    | PruneRequested
    | CancelRequested
    | JobBroken
    | Tick
)

# ---- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admitted:
    job_id: str


@dataclass(frozen=True)
class Refused:
    """The job is not accepted; `reason` names the limit or the clash, and the fix."""

    job_id: str
    reason: str


@dataclass(frozen=True)
class Pruned:
    """These finished jobs are forgotten: drop their data and their rows in the state dir."""

    jobs: tuple[JobInfo, ...]


@dataclass(frozen=True)
class Forgotten:
    """Whole finished jobs forgotten past the budget kept without a state dir: drop their data."""

    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class Holding:
    """After a restart, nothing is dispatched before `until` (workers re-register first)."""

    until: float
    unfinished: int
    jobs: int


@dataclass(frozen=True)
class SendTask:
    worker: str
    job_id: str
    shard: int
    attempt: int
    more: tuple[tuple[int, int], ...] = ()  # (shard, attempt) batched behind it
    backup: bool = False  # a speculative second attempt of a straggler


@dataclass(frozen=True)
class MergeShard:
    """Merge the result in hand: the first valid result for (job, shard), exactly once."""

    job_id: str
    shard: int
    more: tuple[int, ...] = ()  # shards folded into the same partial
    # Whose result it is (the loop finds its payload by it, among a drain's results):
    # not part of what the command means, so not compared.
    worker: str = field(default="", compare=False)
    attempt: int = field(default=0, compare=False)


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
    shards: tuple[int, ...] = ()  # only these (a backup race ended); empty: all of the job's


@dataclass(frozen=True)
class AskReregister:
    worker: str


@dataclass(frozen=True)
class WorkerExpired:
    worker: str
    requeued: int
    silence: float


@dataclass(frozen=True)
class JobStarted:
    """Its first shard went out: the loop writes `started_at` (wall clock) to the state dir."""

    job_id: str
    started_at: float


@dataclass(frozen=True)
class AttemptsGiven:
    """An attempt number higher than any its job gave before goes out in the SendTask after
    this: the loop commits it first, so that a restarted master numbers the job's new attempts
    above every one a worker may still run or report (no two executions share a number)."""

    job_id: str
    high: int


@dataclass(frozen=True)
class StoryChanged:
    """An attempt of a shard not merged ended (failed, lost, given back): the loop writes its
    story, so that a restart, which runs the shard again, keeps every execution in it."""

    job_id: str
    shard: int


@dataclass(frozen=True)
class DropDuplicate:
    job_id: str
    shard: int
    worker: str
    resent: bool = False  # the merged execution's own result, come again
    # Shards whose story gained a "duplicate" attempt from it: the loop writes their stories.
    stories: tuple[int, ...] = ()


Command = (
    Admitted
    | Refused
    | Pruned
    | Forgotten
    | Holding
    | SendTask
    | MergeShard
    | FinalizeJob
    | JobEnded
    | CancelOnWorker
    | AskReregister
    | WorkerExpired
    | DropDuplicate
    | JobStarted
    | AttemptsGiven
    | StoryChanged
)
