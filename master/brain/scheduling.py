"""Dispatch policy: which worker gets a shard, which jobs may run, how many shards go together."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

from shardmill.master.brain.model import Job, Shard, Worker
from shardmill.master.brain.transitions import ShardState

MAX_BATCH = 16  # shards in one task at most


def dispatch(
    active: dict[str, Job],
    workers: dict[str, Worker],
    prefetch_below: float,
    *,
    lease: Callable[[Job, Shard, Worker, list[Shard]], None],
) -> None:
    """Hand ready shards to workers with free credits, shared fairly, spreading the load.

    Free slots go first: each to the job of the client (owner key) running the fewest shards,
    then within that client to its highest `priority` job, then to its job running fewest
    (so a small job submitted behind a big one starts at once, and one client's many jobs
    cannot crowd out another's). Then, only if no job waits for a slot with long shards, jobs
    of short shards also fill each worker's queue (its window), so a child finds its next shard
    waiting instead of a round trip through the master."""
    roster = workers.values()
    if not any(w.credits(w.prefetch) for w in roster):
        return
    share = Share(active)
    if not share.jobs:
        return
    _fill(share, workers, prefetch_below, lease, windows=False)
    if share.jobs and all(job.prefetches(prefetch_below) for job in share.jobs):
        _fill(share, workers, prefetch_below, lease, windows=True)


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
        if not candidates:
            return None
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


def _fill(
    share: Share,
    workers: dict[str, Worker],
    prefetch_below: float,
    lease: Callable[[Job, Shard, Worker, list[Shard]], None],
    *,
    windows: bool,
) -> None:
    """Lease shards one at a time, each to the job whose turn it is: into free slots, or (with
    `windows`) into the queues of workers near enough in time to need them."""
    roster = workers.values()
    full: set[str] = set()  # jobs no worker has room for in this pass
    while (job := share.next(full)) is not None:
        prefetch = job.prefetches(prefetch_below)
        queue = windows and prefetch
        free = {w.worker_id: n for w in roster if (n := w.credits(_queue(w, job, queue))) > 0}
        if not free:
            if not windows:
                return  # slots are the same for every job: none is free
            full.add(job.job_id)
            continue
        shard = job.shards[job.ready[0]]
        worker = pick_worker(free, shard)
        job.ready.popleft()
        more = take_batch(job, shard, roster) if prefetch else []
        lease(job, shard, workers[worker], more)
        share.took(job, 1 + len(more))


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


def pick_worker(free: dict[str, int], shard: Shard) -> str:
    """Most free credits first; a retry avoids the worker its last attempt failed on."""
    last = shard.history[-1].worker if shard.history else None
    ranked = sorted(free, key=lambda w: (w == last, -free[w], w))
    return ranked[0]


def take_batch(job: Job, first: Shard, workers: Iterable[Worker]) -> list[Shard]:
    """More shards to send with `first` in one task, taken off the job's queue: short shards
    of a dataset op that never failed, as many as keep the tail fine grained (guided
    self-scheduling: a task takes the ready shards / (2 x the slots), so the last tasks are
    single shards)."""
    if not job.batchable or first.solo or first.charged:
        return []
    slots = sum(w.slots for w in workers if not w.draining) or 1
    size = min(MAX_BATCH, math.ceil((len(job.ready) + 1) / (2 * slots)))
    more: list[Shard] = []
    while job.ready and len(more) < size - 1:
        nxt = job.shards[job.ready[0]]
        if nxt.solo or nxt.charged:
            break
        more.append(nxt)
        job.ready.popleft()
    return more
