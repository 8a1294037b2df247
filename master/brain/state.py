"""The master's brain: pure, no sockets, no clock. `handle(event, now)` returns commands."""

from __future__ import annotations

import collections
import heapq
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from shardmill.master import events as ev
from shardmill.master.model import TERMINAL, Attempt, Job, JobState, Shard, ShardState, Worker
from shardmill.protocol import ErrorInfo, JobInfo, JobSpec, Lease

S = ShardState


@dataclass(frozen=True)
class Timing:
    heartbeat_interval: float = 1.0
    heartbeat_liveness: int = 3
    retry_backoff: float = 0.05
    retry_backoff_max: float = 5.0
    prefetch_below: float = 0.1  # queue shards on workers for jobs whose shards are this short

    @property
    def expiry(self) -> float:
        return self.heartbeat_interval * self.heartbeat_liveness


MAX_BATCH = 16  # shards in one task at most


class MasterState:
    """Jobs, shards, workers and credits; every decision the master makes is taken here."""

    def __init__(self, timing: Timing | None = None) -> None:
        self.timing = timing or Timing()
        self.jobs: dict[str, Job] = {}
        self.active: dict[str, Job] = {}  # unfinished jobs, in submission order
        self.workers: dict[str, Worker] = {}
        self._waiting: list[tuple[float, str, int]] = []  # (not_before, job, shard) heap
        self._out: list[ev.Command] = []
        self._now = 0.0
        self.wall_offset = 0.0  # wall clock minus the injected clock, for what users read
        self.hold_until = 0.0  # after a restart: let workers re-register before dispatching
        self._handlers: dict[type, Any] = {
            ev.WorkerReady: self._on_ready,
            ev.WorkerSeen: lambda e: self._touch(e.worker),
            ev.WorkerDraining: self._on_draining,
            ev.WorkerLeft: self._on_left,
            ev.ShardSucceeded: self._on_success,
            ev.ShardFailed: self._on_failure,
            ev.JobAdded: self._on_job,
            ev.CancelRequested: lambda e: self._end_job(
                self.jobs[e.job_id], JobState.CANCELLED, "cancelled by a client"
            ),
            ev.JobBroken: lambda e: self._break_job(self.jobs[e.job_id], e.message),
            ev.Tick: lambda e: self._expire_workers(),
        }

    # ---- entry point ---------------------------------------------------------------------------

    def handle(self, event: ev.Event, now: float) -> list[ev.Command]:
        """Apply one event at time `now`, then hand out work; return the commands to carry out."""
        self._now = now
        self._out = []
        handler = self._handlers[type(event)]
        handler(event)
        self._release_waiting()
        self._dispatch()
        return self._out

    def next_deadline(self) -> float | None:
        """The earliest time a Tick could change anything (expiry or end of a backoff)."""
        times = [w.last_seen + self.timing.expiry for w in self.workers.values()]
        if self.hold_until > self._now:
            times.append(self.hold_until)
        if self._waiting:
            times.append(self._waiting[0][0])
        return min(times) if times else None

    # ---- workers -------------------------------------------------------------------------------

    def _touch(self, worker: str) -> bool:
        w = self.workers.get(worker)
        if w is None:
            self._out.append(ev.AskReregister(worker))
            return False
        w.last_seen = self._now
        return True

    def _on_draining(self, e: ev.WorkerDraining) -> None:
        if self._touch(e.worker):
            self.workers[e.worker].draining = True

    def _on_ready(self, e: ev.WorkerReady) -> None:
        old = self.workers.pop(e.worker, None)
        if old is not None:  # re-registration: what it no longer holds goes back to the queue
            held = {(lease.job_id, lease.shard) for lease in e.held}
            self._release_leases(old, charge=False, keep=held)
        w = Worker(worker_id=e.worker, slots=e.slots, last_seen=self._now, prefetch=e.prefetch)
        self.workers[e.worker] = w
        for lease in e.held:
            self._adopt(w, lease)

    def _adopt(self, w: Worker, lease: Lease) -> None:
        """A reconnecting worker still runs this shard: lease it back rather than re-run it."""
        job = self.jobs.get(lease.job_id)
        if job is None or job.finished or not 0 <= lease.shard < len(job.shards):
            self._out.append(ev.CancelOnWorker(w.worker_id, lease.job_id))
            return
        shard = job.shards[lease.shard]
        if shard.state in TERMINAL or (shard.lease and shard.lease != w.worker_id):
            return  # done already, or re-run elsewhere: its result will be a counted duplicate
        if shard.state is S.QUEUED:
            job.ready.remove(shard.index)
        if shard.state is S.WAITING:
            job.move(shard, S.QUEUED, "held by reconnecting worker")
        if shard.state is S.QUEUED:
            job.move(shard, S.LEASED, f"held by reconnecting worker {w.worker_id}")
        shard.lease = w.worker_id
        w.leases[job.job_id, shard.index] = (job.job_id, shard.index)

    def _on_left(self, e: ev.WorkerLeft) -> None:
        w = self.workers.pop(e.worker, None)
        if w is None:
            return
        handed = {(lease.job_id, lease.shard) for lease in e.handback}
        self._release_leases(w, charge=False, keep=set(), uncharged=handed)

    def _expire_workers(self) -> None:
        for w in list(self.workers.values()):
            silence = self._now - w.last_seen
            if silence >= self.timing.expiry:
                del self.workers[w.worker_id]
                n = len(w.leases)
                self._release_leases(w, charge=True, keep=set(), silence=silence)
                self._out.append(ev.WorkerExpired(w.worker_id, n, silence))

    def _release_leases(
        self,
        w: Worker,
        *,
        charge: bool,
        keep: set[tuple[str, int]],
        uncharged: set[tuple[str, int]] | None = None,
        silence: float = 0.0,
    ) -> None:
        """Give a departed worker's shards back. A lost worker charges an attempt to the shards
        it was executing: its oldest `slots` leases (it runs them in the order it got them);
        the rest were queued there, never started, and go back uncharged, as do handed-back
        shards."""
        executing = set(w.tasks()[: w.slots])
        sizes = collections.Counter(w.leases.values())
        for key in sorted(set(w.leases) - keep):
            task = w.leases[key]
            job = self.jobs[key[0]]
            shard = job.shards[key[1]]
            if shard.lease != w.worker_id or shard.state is not S.LEASED:
                continue
            shard.lease = None
            if uncharged is not None and key in uncharged:
                self._close_attempt(shard, "handed back", None)
                self._requeue(job, shard, "handed back", front=True)
            elif (charge or uncharged is not None) and task not in executing:
                self._close_attempt(shard, "never started", None)
                self._requeue(job, shard, f"queued on lost worker {w.worker_id}", front=True)
            elif (charge or uncharged is not None) and sizes[task] > 1:
                # Which shard of a batch was running is unknown: each runs again, alone.
                shard.solo = True
                self._close_attempt(shard, "lost with its batch", None)
                self._requeue(job, shard, f"batch lost with worker {w.worker_id}", front=True)
            elif charge or uncharged is not None:
                why = (
                    f"worker {w.worker_id} stopped answering heartbeats ({silence:.1f} s silent)"
                    if charge
                    else f"worker {w.worker_id} disconnected while running it"
                )
                err = ErrorInfo(kind="lost", message=why, worker=w.worker_id)
                self._charge(job, shard, err)
            else:
                self._close_attempt(shard, "released", None)
                self._requeue(job, shard, "released on re-registration", front=True)

    # ---- jobs and shards -----------------------------------------------------------------------

    def _on_job(self, e: ev.JobAdded) -> None:
        shards = [Shard(job_id=e.job_id, index=i) for i in range(e.shards)]
        job = Job(job_id=e.job_id, spec=e.spec, shards=shards, submitted_at=self._now)
        job.batchable = e.batchable
        job.ready.extend(range(e.shards))
        job.counts[S.QUEUED] = e.shards
        self.jobs[e.job_id] = job
        self.active[e.job_id] = job

    def _shard_for(self, job_id: str, index: int) -> tuple[Job, Shard] | None:
        job = self.jobs.get(job_id)
        if job is None or not 0 <= index < len(job.shards):
            return None
        return job, job.shards[index]

    def _free_lease(self, job: Job, shard: Shard) -> None:
        if shard.lease is not None:
            w = self.workers.get(shard.lease)
            if w is not None:
                w.leases.pop((job.job_id, shard.index), None)
            shard.lease = None

    def _on_success(self, e: ev.ShardSucceeded) -> None:
        w = self.workers.get(e.worker)
        indices = [e.shard, *(s for s, _ in e.more)]
        if w is not None:
            w.last_seen = self._now
            for index in indices:
                w.leases.pop((e.job_id, index), None)
        else:
            self._out.append(ev.AskReregister(e.worker))
        found = self._shard_for(e.job_id, e.shard)
        if found is None:
            return
        job, _ = found
        if len(set(indices)) != len(indices) or not all(0 <= i < len(job.shards) for i in indices):
            return  # a batch naming a shard twice or one the job has not: nothing to merge
        members = [job.shards[i] for i in indices]
        if job.finished or any(m.state in TERMINAL for m in members):
            job.duplicates += 1
            self._out.append(ev.DropDuplicate(e.job_id, e.shard, e.worker))
            # A folded partial cannot be merged in part: the batch's others run again.
            for m in members:
                if m.state is S.LEASED and m.lease == e.worker and not job.finished:
                    self._free_lease(job, m)
                    self._close_attempt(m, "dropped with its batch", None)
                    self._requeue(job, m, "its batch held a shard merged already", front=True)
            return
        if w is not None:
            w.done += len(members)
        job.ok_runs += len(members)
        job.ok_seconds += e.duration
        attempts = {e.shard: e.attempt, **dict(e.more)}
        for m in members:
            self._accept_result(job, m, e.worker, attempts[m.index], e.duration / len(members))
        self._out.append(ev.MergeShard(e.job_id, e.shard, tuple(indices[1:])))
        self._maybe_finish(job)

    def _accept_result(
        self, job: Job, shard: Shard, worker: str, attempt: int, duration: float
    ) -> None:
        """The shard's first result is in: its attempt closes and it is done (merged next)."""
        if not self._close_attempt(shard, "ok", None, worker=worker):
            # A late result from a worker whose attempt was already written off as lost.
            late = Attempt(
                number=attempt,
                worker=worker,
                started=self._now - duration,
                ended=self._now,
                outcome="ok (late)",
            )
            shard.history.append(late)
        while self._close_attempt(shard, "superseded", None):
            pass  # a re-run still in flight elsewhere: its result will be a counted duplicate
        if shard.state is S.QUEUED:
            job.ready.remove(shard.index)
        elif shard.state is S.WAITING:
            shard.not_before = float("inf")  # its heap entry goes stale
        self._free_lease(job, shard)
        job.move(shard, S.DONE, f"result from {worker}")
        shard.merged += 1

    def _on_failure(self, e: ev.ShardFailed) -> None:
        w = self.workers.get(e.worker)
        if w is not None:
            w.last_seen = self._now
            w.leases.pop((e.job_id, e.shard), None)
            for index, _ in e.more:
                w.leases.pop((e.job_id, index), None)
            w.failed += 1
        found = self._shard_for(e.job_id, e.shard)
        if found is None:
            return
        job, shard = found
        # The batch's other shards were not at fault (or, after a crash, may not have been):
        # they run again, alone, uncharged.
        crashed = bool(e.more) and e.error.kind in ("crash", "timeout")
        for index, _ in e.more:
            other = job.shards[index] if 0 <= index < len(job.shards) else None
            if other is None or other is shard or not self._held_by(job, other, e.worker):
                continue
            self._free_lease(job, other)
            other.solo = True
            self._close_attempt(other, "its batch failed", e.error if crashed else None)
            self._requeue(job, other, f"its batch failed on shard {shard.index}", front=True)
        if not self._held_by(job, shard, e.worker):
            return  # a stale report about an attempt that was already re-run or ended
        self._free_lease(job, shard)
        if crashed:
            shard.solo = True
            self._close_attempt(shard, "its batch failed", e.error)
            self._requeue(job, shard, "its batch's process died: runs again alone", front=True)
            return
        self._charge(job, shard, e.error)

    @staticmethod
    def _held_by(job: Job, shard: Shard, worker: str) -> bool:
        return shard.state is S.LEASED and shard.lease == worker and not job.finished

    def _charge(self, job: Job, shard: Shard, err: ErrorInfo) -> None:
        """Count a failed attempt: retry after a backoff, or quarantine the shard."""
        shard.charged += 1
        self._close_attempt(shard, err.kind, err)
        spec = job.spec
        if not err.retryable or shard.charged >= spec.max_attempts:
            job.move(shard, S.FAILED, f"{err.kind} on attempt {shard.charged}")
            # A missing function dooms every shard: fail at once. Other failures (a bad CSV
            # row, a poison shard) are covered by allow_failures.
            if job.counts[S.FAILED] > spec.allow_failures or err.kind == "unknown_function":
                self._end_job(job, JobState.FAILED, failure_message(job, shard))
            else:
                self._maybe_finish(job)
            return
        if err.kind == "lost":  # not the task's fault: run it again at once
            self._requeue(job, shard, "worker lost", front=True)
            return
        delay = backoff(self.timing, job.job_id, shard.index, shard.charged)
        shard.not_before = self._now + delay
        job.move(shard, S.WAITING, f"retry in {delay:.2f} s after {err.kind}")
        heapq.heappush(self._waiting, (shard.not_before, job.job_id, shard.index))

    def _requeue(self, job: Job, shard: Shard, why: str, *, front: bool) -> None:
        if job.finished:
            return
        job.move(shard, S.QUEUED, why)
        if front:
            job.ready.appendleft(shard.index)
        else:
            job.ready.append(shard.index)

    def _close_attempt(
        self, shard: Shard, outcome: str, err: ErrorInfo | None, *, worker: str | None = None
    ) -> bool:
        for attempt in reversed(shard.history):
            if attempt.ended is None and (worker is None or attempt.worker == worker):
                attempt.ended = self._now
                attempt.outcome = outcome
                attempt.error = err
                return True
        return False

    def _release_waiting(self) -> None:
        while self._waiting and self._waiting[0][0] <= self._now:
            _, job_id, index = heapq.heappop(self._waiting)
            job = self.jobs.get(job_id)
            if job is None:
                continue
            shard = job.shards[index]
            if shard.state is S.WAITING and shard.not_before <= self._now:
                self._requeue(job, shard, "backoff over", front=False)

    def _maybe_finish(self, job: Job) -> None:
        settled = job.counts[S.DONE] + job.counts[S.FAILED]
        if job.finished or settled < len(job.shards):
            return
        job.state = JobState.DONE
        job.finished_at = self._now
        missing = tuple(s.index for s in job.shards if s.state is S.FAILED)
        self._out.append(ev.FinalizeJob(job.job_id, missing))

    def _end_job(self, job: Job, state: JobState, error: str) -> None:
        if job.finished:
            return
        job.state = state
        job.error = error
        job.finished_at = self._now
        job.ready.clear()
        holders: set[str] = set()
        for shard in job.shards:
            if shard.state in TERMINAL:
                continue
            if shard.lease is not None:
                holders.add(shard.lease)
                self._close_attempt(shard, "cancelled", None)
            self._free_lease(job, shard)
            job.move(shard, S.CANCELLED, f"job {state}")
        self._out.extend(ev.CancelOnWorker(w, job.job_id) for w in sorted(holders))
        self._out.append(ev.JobEnded(job.job_id, str(state), error))

    def _break_job(self, job: Job, message: str) -> None:
        if job.state is JobState.DONE:  # finalize itself failed: the result never existed
            job.state = JobState.FAILED
            job.error = message
            self._out.append(ev.JobEnded(job.job_id, str(job.state), message))
            return
        self._end_job(job, JobState.FAILED, message)

    # ---- dispatch ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand ready shards to workers with free credits, FIFO across jobs, spreading the load.
        A job of short shards also fills each worker's queue (its prefetch), so a child finds
        its next shard waiting instead of a round trip through the master."""
        if self._now < self.hold_until:
            return
        workers = self.workers.values()
        if not any(w.credits(prefetch=True) for w in workers):
            return
        may_prefetch = True
        for job in self._runnable_jobs():
            prefetch = may_prefetch and job.prefetches(self.timing.prefetch_below)
            free = {w.worker_id: n for w in workers if (n := w.credits(prefetch)) > 0}
            while job.ready and free:
                shard = job.shards[job.ready[0]]
                worker = self._pick_worker(free, shard)
                job.ready.popleft()
                more = self._batch(job, shard) if prefetch else []
                self._lease(job, shard, self.workers[worker], more)
                free[worker] -= 1
                if free[worker] == 0:
                    del free[worker]
            if job.ready:  # it waits for a slot: no later job may queue shards ahead of it
                may_prefetch = False
            if not any(w.credits(prefetch=may_prefetch) for w in workers):
                return

    def _runnable_jobs(self) -> Iterator[Job]:
        # Only unfinished jobs are scanned: finished ones leave `active` (see _settle_active).
        for job_id, job in list(self.active.items()):
            if job.finished:
                del self.active[job_id]
            elif job.ready:
                yield job

    def _pick_worker(self, free: dict[str, int], shard: Shard) -> str:
        # Most free credits first; a retry avoids the worker its last attempt failed on.
        last = shard.history[-1].worker if shard.history else None
        ranked = sorted(free, key=lambda w: (w == last, -free[w], w))
        return ranked[0]

    def _batch(self, job: Job, first: Shard) -> list[Shard]:
        """More shards to send with `first` in one task: short shards of a dataset op that
        never failed, as many as keep the tail fine grained (guided self-scheduling: a
        task takes the ready shards / (2 x the slots), so the last tasks are single shards)."""
        if not job.batchable or first.solo or first.charged:
            return []
        slots = sum(w.slots for w in self.workers.values() if not w.draining) or 1
        size = min(MAX_BATCH, math.ceil((len(job.ready) + 1) / (2 * slots)))
        more: list[Shard] = []
        while job.ready and len(more) < size - 1:
            nxt = job.shards[job.ready[0]]
            if nxt.solo or nxt.charged:
                break
            more.append(nxt)
            job.ready.popleft()
        return more

    def _lease(self, job: Job, shard: Shard, w: Worker, more: list[Shard] | None = None) -> None:
        task = (job.job_id, shard.index)
        attempts = []
        for s in [shard, *(more or [])]:
            job.move(s, S.LEASED, f"leased to {w.worker_id}" + (" in a batch" if more else ""))
            s.lease = w.worker_id
            w.leases[job.job_id, s.index] = task
            number = len(s.history) + 1
            s.history.append(Attempt(number=number, worker=w.worker_id, started=self._now))
            attempts.append((s.index, number))
        if job.started_at is None:
            job.started_at = self._now
        first, *rest = attempts
        self._out.append(
            ev.SendTask(w.worker_id, job.job_id, shard.index, first[1], more=tuple(rest))
        )

    # ---- restart -------------------------------------------------------------------------------

    def restore_job(
        self,
        job_id: str,
        spec: JobSpec,
        settled: dict[int, ShardState],
        *,
        shards: int,
        submitted_at: float,
        state: JobState,
        error: str | None,
        finished_at: float | None,
    ) -> None:
        """Rebuild a checkpointed job: settled shards stay settled, the rest wait in the queue.

        Creation, not a transition: a restored shard starts in the state it was saved in.
        """
        job = Job(
            job_id=job_id,
            spec=spec,
            shards=[],
            submitted_at=submitted_at,
            state=state,
            error=error,
            finished_at=finished_at,
        )
        for i in range(shards):
            st = settled.get(i, S.QUEUED if state is JobState.RUNNING else S.CANCELLED)
            shard = Shard(job_id=job_id, index=i, state=st, merged=int(st is S.DONE))
            shard.story.append(f"restored as {st}")
            job.shards.append(shard)
            job.counts[st] += 1
            if st is S.QUEUED:
                job.ready.append(i)
        self.jobs[job_id] = job
        if not job.finished:
            self.active[job_id] = job

    def forget_job(self, job_id: str) -> None:
        """Drop a finished job (pruning); running jobs are never forgotten."""
        job = self.jobs[job_id]
        if not job.finished:
            raise ValueError(f"job {job_id} is still running; cancel it first")
        del self.jobs[job_id]

    # ---- queries -------------------------------------------------------------------------------

    def job_info(self, job_id: str, *, shards: bool = False) -> JobInfo:
        job = self.jobs[job_id]
        return JobInfo(
            job_id=job.job_id,
            name=job.spec.name,
            op=job.spec.op,
            state=str(job.state),
            shards_total=len(job.shards),
            shards_done=job.counts[S.DONE],
            shards_failed=job.counts[S.FAILED],
            shards_running=job.counts[S.LEASED],
            submitted_at=job.submitted_at + self.wall_offset,
            started_at=None if job.started_at is None else job.started_at + self.wall_offset,
            finished_at=None if job.finished_at is None else job.finished_at + self.wall_offset,
            error=job.error,
            duplicates=job.duplicates,
            missing_shards=[s.index for s in job.shards if s.state is S.FAILED],
            shards=[s.info(history=True, offset=self.wall_offset) for s in job.shards]
            if shards
            else None,
        )


def backoff(timing: Timing, job_id: str, shard: int, attempt: int) -> float:
    """Capped exponential backoff with deterministic jitter in [0.5, 1.5) (keeps `handle` pure)."""
    base = min(timing.retry_backoff_max, timing.retry_backoff * 2.0 ** (attempt - 1))
    jitter = 0.5 + (zlib.crc32(f"{job_id}:{shard}:{attempt}".encode()) % 1000) / 1000
    return min(timing.retry_backoff_max, base * jitter)


def failure_message(job: Job, shard: Shard) -> str:
    """A failure that names the shard, every attempt's worker and error, and the next step."""
    lines = [
        f"job {job.job_id} failed: shard {shard.index} of {len(job.shards)} failed "
        f"after {len(shard.history)} attempt(s) (max_attempts={job.spec.max_attempts})"
    ]
    for a in shard.history:
        err = a.error
        detail = "" if err is None else f"{err.kind}: {err.type} {err.message}".strip()
        if err is not None and err.signal:
            detail += f" (signal {err.signal})"
        elif err is not None and err.exit_code is not None:
            detail += f" (exit code {err.exit_code})"
        lines.append(f"  attempt {a.number} on worker {a.worker}: {detail}")
    last = shard.history[-1].error if shard.history else None
    if last is not None and last.traceback:
        lines.append("remote traceback (last attempt):\n" + last.traceback.rstrip())
    lines.append(next_step(last))
    return "\n".join(lines)


def next_step(err: ErrorInfo | None) -> str:
    if err is None:
        return "next step: inspect it with `shardmill why JOB SHARD`"
    if err.kind == "unknown_function":
        return "next step: start the workers with the module: `shardmill worker --import MOD`"
    if err.kind == "timeout":
        return "next step: raise the job's task_timeout or use more, smaller shards"
    if err.kind == "bad_input":
        return "next step: fix the input named above (file, line, field) and resubmit"
    if err.kind in ("crash", "lost"):
        return "next step: check the worker's logs and memory; the task may crash its process"
    return "next step: fix the error in the task code (see the traceback) and resubmit"
