"""Dispatch policy: which worker gets a shard, which jobs may run, how many shards go together."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

from shardmill.master.brain.model import Job, Shard, Worker

MAX_BATCH = 16  # shards in one task at most


def dispatch(
    active: dict[str, Job],
    workers: dict[str, Worker],
    prefetch_below: float,
    *,
    lease: Callable[[Job, Shard, Worker, list[Shard]], None],
) -> None:
    """Hand ready shards to workers with free credits, FIFO across jobs, spreading the load.
    A job of short shards also fills each worker's queue (its prefetch), so a child finds
    its next shard waiting instead of a round trip through the master."""
    roster = workers.values()
    if not any(w.credits(w.prefetch) for w in roster):
        return
    may_prefetch = True
    for job in runnable_jobs(active):
        prefetch = may_prefetch and job.prefetches(prefetch_below)
        free = {w.worker_id: n for w in roster if (n := w.credits(_queue(w, job, prefetch))) > 0}
        while job.ready and free:
            shard = job.shards[job.ready[0]]
            worker = pick_worker(free, shard)
            job.ready.popleft()
            more = take_batch(job, shard, roster) if prefetch else []
            lease(job, shard, workers[worker], more)
            free[worker] -= 1
            if free[worker] == 0:
                del free[worker]
        if job.ready:  # it waits for a slot: no later job may queue shards ahead of it
            may_prefetch = False
        if not any(w.credits(w.prefetch if may_prefetch else 0) for w in roster):
            return


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
