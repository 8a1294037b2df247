"""The master's brain: pure, no sockets, no clock. `handle(event, now)` returns commands."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from shardmill.master.brain import events as ev
from shardmill.master.brain.admission import refusal
from shardmill.master.brain.archive import Archive
from shardmill.master.brain.attempt import ran_again, reported
from shardmill.master.brain.failures import backoff, failure_message
from shardmill.master.brain.ledger import Ledger
from shardmill.master.brain.model import Job, Limits, Shard, Timing, Worker
from shardmill.master.brain.restore import restored_job
from shardmill.master.brain.roster import Roster
from shardmill.master.brain.scheduling import dispatch
from shardmill.master.brain.speculation import SlowHosts, plan_backups, speculates
from shardmill.master.brain.transitions import TERMINAL, JobState, ShardState
from shardmill.wire.protocol import ErrorInfo

S = ShardState
PLAN_EVERY = 0.05  # seconds between looks for stragglers while results come in


class MasterState(Roster, Ledger):
    """Jobs, shards, workers and credits; every decision the master makes is taken here."""

    def __init__(
        self,
        timing: Timing | None = None,
        *,
        limits: Limits | None = None,
        wall_offset: float = 0.0,
    ) -> None:
        self.timing = timing or Timing()
        self.limits = limits or Limits()
        self.wall_offset = wall_offset  # wall clock minus the injected clock, for what users read
        self.jobs: dict[str, Job] = {}  # unfinished jobs, and finished ones not archived yet
        self.archive = Archive()  # finished jobs' summaries (see archive.py)
        self.active: dict[str, Job] = {}  # unfinished jobs, in submission order
        self.workers: dict[str, Worker] = {}
        self.room: set[str] = set()  # workers that may have room for a task (see dispatch)
        self._expiry_due: float | None = None  # the earliest a worker may expire, or sooner
        self._next_plan = 0.0  # when speculation may look for stragglers again
        self.hold_until = 0.0  # after a restart: let workers re-register before dispatching
        self._waiting: list[tuple[float, str, int]] = []  # (not_before, job, shard) heap
        self._out: list[ev.Command] = []
        self._backup_due: float | None = None  # when a running shard becomes a straggler
        self._turns = itertools.count(1)  # stamps each job's last lease: equal shares take turns
        self._now = 0.0
        self._handlers = self._table()

    def _table(self) -> dict[type, Callable[[Any], object]]:
        """What each event does."""
        return {
            ev.WorkerReady: self._on_ready,
            ev.WorkerSeen: lambda e: self._touch(e.worker, e.rtt),
            ev.WorkerDraining: self._on_draining,
            ev.WorkerLeft: self._on_left,
            ev.ShardSucceeded: self._on_success,
            ev.ShardFailed: self._on_failure,
            ev.SubmitRequested: self._on_submit,
            ev.JobAdded: self._on_job,
            ev.JobRestored: self._on_restored,
            ev.RestoreDone: self._on_restore_done,
            ev.PruneRequested: self._on_prune,
            ev.JobArchived: self._on_archived,
            ev.SummariesRestored: lambda e: self.archive.defer(e.packed),
            ev.CancelRequested: lambda e: self._end_job(
                self.jobs[e.job_id], JobState.CANCELLED, "cancelled by a client"
            ),
            ev.JobBroken: lambda e: self._break_job(self.jobs[e.job_id], e.message),
            ev.Tick: lambda e: self._expire_workers(),
        }

    # ---- entry point ---------------------------------------------------------------------------

    def handle(self, event: ev.Event, now: float) -> list[ev.Command]:
        """Apply one event at time `now`, then hand out work; return the commands to carry out."""
        return self.handle_all((event,), now)

    def handle_all(self, events: Sequence[ev.Event], now: float) -> list[ev.Command]:
        """Apply events that arrived together (the results of one drain of the worker
        socket), then hand out work once for them all, as if they had come at the same
        instant."""
        self._now = now
        self._out = []
        for event in events:
            self._handlers[type(event)](event)
        self._release_waiting()
        self._dispatch()
        return self._out

    def next_deadline(self) -> float | None:
        """The earliest time a Tick could change anything (expiry, end of a backoff, a shard
        slow enough for a backup)."""
        if self._expiry_due is not None and self._expiry_due <= self._now:
            self._expiry_due = self._first_expiry()  # heard from since, most likely
        times = [] if self._expiry_due is None else [self._expiry_due]
        if self.hold_until > self._now:
            times.append(self.hold_until)
        if self._backup_due is not None:
            times.append(self._backup_due)
        if self._waiting:
            times.append(self._waiting[0][0])
        return min(times) if times else None

    # ---- workers -------------------------------------------------------------------------------

    def _shard_for(self, job_id: str, index: int) -> tuple[Job, Shard] | None:
        job = self.jobs.get(job_id)
        if job is None or not 0 <= index < len(job.shards):
            return None
        return job, job.shards[index]

    def _free_lease(self, job: Job, shard: Shard) -> None:
        if shard.lease is not None:
            w = self.workers.get(shard.lease)
            if w is not None:
                w.leases.drop((job.job_id, shard.index))
            shard.lease = None

    def _give_back(
        self, job: Job, shard: Shard, outcome: str, why: str, err: ErrorInfo | None = None
    ) -> None:
        """Its attempt ends uncharged with `outcome`, and it goes first in line again."""
        shard.close_attempt(self._now, outcome, err)
        job.requeue(shard, why, front=True)
        self._out.append(ev.StoryChanged(job.job_id, shard.index))

    def _on_success(self, e: ev.ShardSucceeded) -> None:
        w = self.workers.get(e.worker)
        indices = [e.shard, *(s for s, _ in e.more)]
        if w is not None:
            w.last_seen = self._now
            for index in indices:
                w.leases.drop((e.job_id, index))
        else:
            self._out.append(ev.AskReregister(e.worker))
        job = self.jobs.get(e.job_id)
        if job is None or len(set(indices)) != len(indices):
            return  # a batch naming a shard twice: nothing to merge
        if not all(0 <= i < len(job.shards) for i in indices):
            return  # a shard the job has not
        members = [job.shards[i] for i in indices]
        if job.finished or any(m.state in TERMINAL for m in members):
            self._drop_duplicate(job, e, members)
            return
        if w is not None:
            w.done += len(members)
        job.ok_runs += len(members)
        job.ok_seconds += e.duration
        job.record_run(e.worker, e.duration, len(members))
        attempts = {e.shard: e.attempt, **dict(e.more)}
        ended = self._ended(e)
        for m in members:
            self._end_race(job, m, e.worker)
            self._free_lease(job, m)
            seconds = e.duration / len(members)
            output = e.output if m.index == e.shard else ""  # a batch prints as one
            job.accept(m, e.worker, attempts[m.index], seconds, now=ended, output=output)
        merge = ev.MergeShard(e.job_id, e.shard, tuple(indices[1:]), e.worker, e.attempt)
        self._out.append(merge)
        self._maybe_finish(job)

    def _ended(self, e: ev.ShardSucceeded) -> float:
        """When the result's attempt ended, on the master's clock: as the worker says (a result
        resent after a restart ended before it), never later than now."""
        return min(self._now, e.finished - self.wall_offset) if e.finished else self._now

    def _drop_duplicate(self, job: Job, e: ev.ShardSucceeded, members: list[Shard]) -> None:
        """A result for shards merged (or ended) already. A second execution's is a "duplicate"
        attempt in each merged shard's story; a copy of a result the story has (a worker
        resends what it sent lately after a reconnect) is `resent`; a late result for shards
        that failed or were cancelled is neither."""
        attempts = {e.shard: e.attempt, **dict(e.more)}
        ended, ran = self._ended(e), e.duration / len(members)
        stories = tuple(
            m.index
            for m in members
            if m.state is S.DONE
            and ran_again(m.history, e.worker, attempts[m.index], ended=ended, ran=ran)
        )
        resent = not stories and reported(members[0].history, e.worker, e.attempt)
        job.duplicates += len(stories)
        job.resent += resent
        self._out.append(ev.DropDuplicate(e.job_id, e.shard, e.worker, resent, stories))
        # A folded partial cannot be merged in part: the batch's others run again.
        for m in members:
            if job.leased_to(m, e.worker):
                self._free_lease(job, m)
                self._give_back(
                    job, m, "dropped with its batch", "its batch held a shard merged already"
                )

    def _on_failure(self, e: ev.ShardFailed) -> None:
        w = self.workers.get(e.worker)
        if w is not None:
            w.last_seen = self._now
            w.leases.drop((e.job_id, e.shard))
            for index, _ in e.more:
                w.leases.drop((e.job_id, index))
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
            if other is None or other is shard or not job.leased_to(other, e.worker):
                continue
            self._free_lease(job, other)
            other.solo = True
            why = f"its batch failed on shard {shard.index}"
            self._give_back(job, other, "its batch failed", why, e.error if crashed else None)
        if shard.backup is not None and e.worker in (shard.lease, shard.backup):
            self._lose_racer(job, shard, e.worker, e.error)  # the other attempt runs on
            return
        if not job.leased_to(shard, e.worker):
            return  # a stale report about an attempt that was already re-run or ended
        self._free_lease(job, shard)
        if crashed:
            shard.solo = True
            why = "its batch's process died: runs again alone"
            self._give_back(job, shard, "its batch failed", why, e.error)
            return
        self._charge(job, shard, e.error)

    def _charge(self, job: Job, shard: Shard, err: ErrorInfo) -> None:
        """Count a failed attempt: retry after a backoff, or quarantine the shard."""
        job.charge(shard, err, self._now)
        self._out.append(ev.StoryChanged(job.job_id, shard.index))
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
            job.requeue(shard, "worker lost", front=True)
            return
        delay = backoff(self.timing, job.job_id, shard.index, shard.charged)
        shard.not_before = self._now + delay
        job.move(shard, S.WAITING, f"retry in {delay:.2f} s after {err.kind}")
        heapq.heappush(self._waiting, (shard.not_before, job.job_id, shard.index))

    def _release_waiting(self) -> None:
        while self._waiting and self._waiting[0][0] <= self._now:
            _, job_id, index = heapq.heappop(self._waiting)
            job = self.jobs.get(job_id)
            if job is None:
                continue
            shard = job.shards[index]
            if shard.state is S.WAITING and shard.not_before <= self._now:
                job.requeue(shard, "backoff over", front=False)

    # ---- jobs ----------------------------------------------------------------------------------

    def _on_submit(self, e: ev.SubmitRequested) -> None:
        reason = refusal(e, self.known, self.active.values(), self.limits)
        self._out.append(ev.Admitted(e.job_id) if reason is None else ev.Refused(e.job_id, reason))

    def _on_job(self, e: ev.JobAdded) -> None:
        shards = [Shard(job_id=e.job_id, index=i) for i in range(e.shards)]
        at = self._now if e.submitted_at is None else e.submitted_at
        job = Job(e.job_id, e.spec, shards, submitted_at=at, owner=e.owner)
        job.batchable = e.batchable
        job.ready.extend(range(e.shards))
        job.counts[S.QUEUED] = e.shards
        job.story.append("submitted")
        self.jobs[e.job_id] = job
        self.active[e.job_id] = job

    def _maybe_finish(self, job: Job) -> None:
        settled = job.counts[S.DONE] + job.counts[S.FAILED]
        if job.finished or settled < len(job.shards):
            return
        job.transition(JobState.DONE, "every shard settled", now=self._now)
        missing = tuple(s.index for s in job.shards if s.state is S.FAILED)
        self._out.append(ev.FinalizeJob(job.job_id, missing))

    def _end_job(self, job: Job, state: JobState, error: str) -> None:
        if job.finished:
            return
        job.transition(state, error.splitlines()[0], now=self._now)
        job.error = error
        job.ready.clear()
        holders: set[str] = set()
        for shard in job.shards:
            if shard.state in TERMINAL:
                continue
            for holder in filter(None, (shard.lease, shard.backup)):
                holders.add(holder)
                shard.close_attempt(self._now, "cancelled", None, worker=holder)
            self._end_race(job, shard, None)
            self._free_lease(job, shard)
            job.move(shard, S.CANCELLED, f"job {state}")
        self._out.extend(ev.CancelOnWorker(w, job.job_id) for w in sorted(holders))
        self._out.append(ev.JobEnded(job.job_id, str(state), error))

    def _break_job(self, job: Job, message: str) -> None:
        if job.state is JobState.DONE:  # finalize itself failed: the result never existed
            job.transition(JobState.FAILED, message.splitlines()[0], now=self._now)
            job.error = message
            self._out.append(ev.JobEnded(job.job_id, str(job.state), message))
            return
        self._end_job(job, JobState.FAILED, message)

    # ---- restart -------------------------------------------------------------------------------

    def _on_restored(self, e: ev.JobRestored) -> None:
        job = restored_job(e, self.wall_offset)
        self.jobs[e.job_id] = job
        if not job.finished:
            self.active[e.job_id] = job

    def _on_restore_done(self, e: ev.RestoreDone) -> None:
        # Workers still running shards re-register with them: give them time to come back
        # before the queue is handed out again, so those shards are not run twice.
        unfinished = sum(not job.finished for job in self.jobs.values())
        if unfinished:
            self.hold_until = self._now + self.timing.expiry
            jobs = len(self.jobs) + len(self.archive)
            self._out.append(ev.Holding(self.hold_until, unfinished, jobs))

    # ---- dispatch ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self._now >= self.hold_until:
            slow = SlowHosts(self.workers, self.timing, self._now)
            dispatch(self.active, self.workers, self.room, self.timing, slow, lease=self._lease)
            self._speculate()

    def _speculate(self) -> None:
        """Backups of shards running far past their job's median, on workers with idle slots:
        looked for at most every PLAN_EVERY seconds (it walks every worker's running tasks),
        and when the next straggler is due."""
        idle: dict[str, int] = {}
        if any(speculates(job, self.timing) for job in self.active.values()):
            # In name order: which idle worker takes a backup must not follow set order.
            workers = (self.workers.get(w) for w in sorted(self.room))
            idle = {w.worker_id: n for w in workers if w is not None and (n := w.credits(0)) > 0}
        if not idle:
            self._backup_due = None
            return
        due = self._backup_due
        if self._now < self._next_plan and (due is None or self._now < due):
            self._backup_due = self._next_plan if due is None else min(due, self._next_plan)
            return
        self._next_plan = self._now + PLAN_EVERY
        plan = plan_backups(self.active, self.workers, idle, self.timing, self._now)
        self._backup_due = plan.due
        for job, shard, w in plan.backups:
            shard.backup = w.worker_id
            job.backups += 1
            w.leases.add((job.job_id, shard.index), (job.job_id, shard.index))
            attempt = shard.start_attempt(
                w.worker_id, now=self._now, backup=True, above=job.attempts_before
            )
            self._given(job, attempt)
            shard.story.append(f"backup attempt {attempt} on {w.worker_id}: a straggler")
            self._out.append(
                ev.SendTask(w.worker_id, job.job_id, shard.index, attempt, backup=True)
            )

    def _lease(self, job: Job, shard: Shard, w: Worker, more: list[Shard]) -> None:
        task = (job.job_id, shard.index)
        attempts = []
        for s in [shard, *more]:
            job.move(s, S.LEASED, f"leased to {w.worker_id}" + (" in a batch" if more else ""))
            s.lease = w.worker_id
            w.leases.add((job.job_id, s.index), task)
            number = s.start_attempt(w.worker_id, now=self._now, above=job.attempts_before)
            attempts.append((s.index, number))
        if job.started_at is None:
            job.started_at = self._now
            self._out.append(ev.JobStarted(job.job_id, self._now + self.wall_offset))
        self._given(job, max(number for _, number in attempts))
        job.turn = next(self._turns)
        job.declined_at = None  # its shards move: a slow host that left them waits anew
        first, *rest = attempts
        self._out.append(
            ev.SendTask(w.worker_id, job.job_id, shard.index, first[1], more=tuple(rest))
        )

    def _given(self, job: Job, number: int) -> None:
        """Attempt `number` of the job goes out next: its highest yet is committed first."""
        if number > job.attempts_given:
            job.attempts_given = number
            self._out.append(ev.AttemptsGiven(job.job_id, number))
