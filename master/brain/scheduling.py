"""Dispatch policy: which worker gets a shard, which jobs may run, how many shards go together."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator

from shardmill.master.brain.model import Job, Shard, Timing, Worker
from shardmill.master.brain.speculation import SlowHosts
from shardmill.master.brain.transitions import ShardState

MAX_BATCH = 16  # shards in one task at most


Lease = Callable[[Job, Shard, Worker, list[Shard]], None]


def dispatch(
    active: dict[str, Job],
    workers: dict[str, Worker],
    room: set[str],
    timing: Timing,
    slow: SlowHosts,
    *,
    lease: Lease,
) -> None:
    """Hand ready shards to workers with free credits, shared fairly, spreading the load.

    Free slots go first: each to the job of the client (owner key) running the fewest shards,
    then within that client to its highest `priority` job, then to its job running fewest
    (so a small job submitted behind a big one starts at once, and one client's many jobs
    cannot crowd out another's). Then, only if no job waits for a slot with long shards, jobs
    of short shards also fill each worker's queue (its window), so a child finds its next shard
    waiting instead of a round trip through the master. A worker known to be slow for a job
    takes none of its shards that the others would get to sooner (`SlowHosts`).

    Only the workers in `room` are looked at: those whose room was last seen above zero, or
    may have grown since (a lease ended, it registered, it was heard from); the ones left
    with none leave the set. So a result costs a look at its own worker, not at them all."""
    share = Share(active)
    if not share.jobs:
        return
    open_ = {
        w: workers[w] for w in room if w in workers and workers[w].credits(workers[w].prefetch)
    }
    room.intersection_update(open_)  # the others have no room at any window
    if not open_:
        return
    total = _Slots(workers)
    _fill(share, open_, total, timing, slow, lease, windows=False)
    windows = bool(share.jobs) and all(job.prefetches(timing.prefetch_below) for job in share.jobs)
    if windows:
        _fill(share, open_, total, timing, slow, lease, windows=True)
    # Full now: a worker leaves until its room grows (a lease ends, or it is heard from).
    room.difference_update(w for w, x in open_.items() if not x.credits(x.window if windows else 0))


class Share:
    """Runnable jobs, and the shards each job and each client (owner) holds now."""

    def __init__(self, active: dict[str, Job]) -> None:
        self.jobs = list(runnable_jobs(active))
        self.order = {job.job_id: i for i, job in enumerate(self.jobs)}
        self.held = {
            job.job_id: job.counts[ShardState.LEASED] + job.backups for job in active.values()
        }
        self.by_owner: dict[str, int] = {}
        self.owner_turn: dict[str, int] = {}  # when its client was last served
        for job in active.values():
            self.by_owner[job.owner] = self.by_owner.get(job.owner, 0) + self.held[job.job_id]
            self.owner_turn[job.owner] = max(self.owner_turn.get(job.owner, 0), job.turn)

    def next(self, skip: set[str]) -> Job | None:
        """The job whose turn it is: fewest held by its client, its priority, fewest its own;
        on a tie, the client and then the job served longest ago (so they take turns)."""
        candidates = [j for j in self.jobs if j.ready and j.job_id not in skip]
        if len(candidates) < 2:  # one job running (the common case): no turns to weigh
            return candidates[0] if candidates else None
        return min(
            candidates,
            key=lambda j: (
                self.by_owner[j.owner],
                self.owner_turn[j.owner],
                -j.spec.priority,
                self.held[j.job_id],
                j.turn,
                self.order[j.job_id],
            ),
        )

    def took(self, job: Job, n: int) -> None:
        self.held[job.job_id] += n
        self.by_owner[job.owner] += n
        self.owner_turn[job.owner] = job.turn  # the lease stamped it
        if not job.ready:
            self.jobs.remove(job)


class Free:
    """Workers with room for a job's next task and how much, most room first (a heap whose
    entries are checked against `room` when they surface)."""

    def __init__(self, room: dict[str, int]) -> None:
        self.room = room
        self.heap = [(-n, w) for w, n in room.items()]
        heapq.heapify(self.heap)

    def pick(self, avoid: str | None) -> str:
        """Most room first, then by name; not `avoid` (where a retry failed) if another has room."""
        best = self._top()
        if best != avoid or len(self.room) == 1:
            return best
        top = heapq.heappop(self.heap)
        other = self._top()
        heapq.heappush(self.heap, top)
        return other

    def best(self, allowed: Callable[[str], bool], avoid: str | None) -> str | None:
        """The worker `pick` would choose among the `allowed` ones (a scan: rarely asked)."""
        ranked = ((w == avoid, -n, w) for w, n in self.room.items() if allowed(w))
        return min(ranked, default=(False, 0, None))[2]

    def take(self, worker: str) -> None:
        n = self.room.get(worker, 0) - 1
        if n > 0:
            self.room[worker] = n
            heapq.heappush(self.heap, (-n, worker))
        else:
            self.room.pop(worker, None)

    def _top(self) -> str:
        while True:
            n, w = self.heap[0]
            if self.room.get(w) == -n:
                return w
            heapq.heappop(self.heap)


class _Slots:
    """All workers' slots, counted once per dispatch and only if a batch asks."""

    def __init__(self, workers: dict[str, Worker]) -> None:
        self.workers = workers
        self.n: int | None = None

    def __call__(self) -> int:
        if self.n is None:
            self.n = sum(w.slots for w in self.workers.values() if not w.draining) or 1
        return self.n


def _fill(
    share: Share,
    workers: dict[str, Worker],
    slots: Callable[[], int],
    timing: Timing,
    slow: SlowHosts,
    lease: Lease,
    *,
    windows: bool,
) -> None:
    """Lease shards one at a time, each to the job whose turn it is: into free slots, or (with
    `windows`) into the queues of workers near enough in time to need them."""
    full: set[str] = set()  # jobs no worker has room for in this pass
    frees: dict[str, Free] = {}  # per job (windows differ by job), or one for slots
    while (job := share.next(full)) is not None:
        prefetch = job.prefetches(timing.prefetch_below)
        key = job.job_id if windows else ""
        if (free := frees.get(key)) is None:
            queue = windows and prefetch
            room = {
                w.worker_id: n
                for w in workers.values()
                if (n := w.credits(_queue(w, job, queue))) > 0
            }
            free = frees[key] = Free(room)
        shard = job.shards[job.ready[0]]
        worker = _choose(free, job, shard, workers, slow) if free.room else None
        if worker is None:
            if not windows and not free.room:
                return  # slots are the same for every job: none is free
            full.add(job.job_id)  # no room for it, or only on a slow host for it
            continue
        job.ready.popleft()
        more = take_batch(job, shard, slots) if prefetch else []
        lease(job, shard, workers[worker], more)
        share.took(job, 1 + len(more))
        for other in frees.values():  # one task more on it, whatever job it was for
            other.take(worker)


def _choose(
    free: Free, job: Job, shard: Shard, workers: dict[str, Worker], slow: SlowHosts
) -> str | None:
    """The worker for `shard`: the one with most room (not where its last attempt failed, if
    another has room), unless it is a slow host that leaves the shard to others."""
    avoid = shard.history[-1].worker if shard.history else None
    worker = free.pick(avoid)
    if not slow.leaves(job, workers[worker]):
        return worker
    return free.best(lambda w: not slow.leaves(job, workers[w]), avoid)


def _queue(worker: Worker, job: Job, prefetch: bool) -> int:
    """The shards of `job` that may wait on `worker` behind its running ones (its window)."""
    if not prefetch:
        return 0
    worker.window = worker.queue_window(job.mean_run)
    return worker.window


def runnable_jobs(active: dict[str, Job]) -> Iterator[Job]:
    """Unfinished jobs with ready shards, in submission order; finished ones leave `active`."""
    for job_id, job in list(active.items()):
        if job.finished:
            del active[job_id]
        elif job.ready:
            yield job


def take_batch(job: Job, first: Shard, slots: Callable[[], int]) -> list[Shard]:
    """More shards to send with `first` in one task, taken off the job's queue: short shards
    of a dataset op that never failed, as many as keep the tail fine grained (guided
    self-scheduling: a task takes the ready shards / (2 x the slots), so the last tasks are
    single shards)."""
    if not job.batchable or first.solo or first.charged:
        return []
    size = min(MAX_BATCH, math.ceil((len(job.ready) + 1) / (2 * slots())))
    more: list[Shard] = []
    while job.ready and len(more) < size - 1:
        nxt = job.shards[job.ready[0]]
        if nxt.solo or nxt.charged:
            break
        more.append(nxt)
        job.ready.popleft()
    return more
