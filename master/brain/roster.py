"""Workers and the shards they hold: registration, heartbeats, departures and expiry.

The half of the brain that tracks who is alive and what each one holds; the job half
(`MasterState`) decides what a departed worker's shards become (`_give_back`, `_charge`).
"""

from __future__ import annotations

from shardmill.master.brain import events as ev
from shardmill.master.brain.attempt import Attempt, find
from shardmill.master.brain.failures import lost_error
from shardmill.master.brain.model import Job, Leases, Shard, Timing, Worker
from shardmill.master.brain.transitions import TERMINAL, ShardState
from shardmill.wire.protocol import ErrorInfo, Lease

S = ShardState


class Roster:
    """The live workers and their leases; pure, like the rest of the brain."""

    jobs: dict[str, Job]
    workers: dict[str, Worker]
    room: set[str]  # workers whose room for tasks may have grown since the last dispatch
    _expiry_due: float | None
    timing: Timing
    _out: list[ev.Command]
    _now: float
    wall_offset: float

    def _give_back(
        self, job: Job, shard: Shard, outcome: str, why: str, err: ErrorInfo | None = None
    ) -> None:
        raise NotImplementedError

    def _charge(self, job: Job, shard: Shard, err: ErrorInfo) -> None:
        raise NotImplementedError

    def _touch(self, worker: str, rtt: float | None = None) -> bool:
        w = self.workers.get(worker)
        if w is None:
            self._out.append(ev.AskReregister(worker))
            return False
        w.last_seen = self._now
        if rtt is not None:
            w.observe_rtt(rtt)
        self.room.add(worker)  # its window may have grown: dispatch looks at it again
        return True

    def _on_draining(self, e: ev.WorkerDraining) -> None:
        if self._touch(e.worker):
            self.workers[e.worker].draining = True

    def _on_ready(self, e: ev.WorkerReady) -> None:
        old = self.workers.pop(e.worker, None)
        if old is not None:  # re-registration: what it no longer holds goes back to the queue
            held = {(lease.job_id, lease.shard) for lease in e.held}
            self._release_leases(old, charge=False, keep=held)
        leases = Leases(e.worker, self.room)
        w = Worker(e.worker, e.slots, self._now, leases, prefetch=e.prefetch)
        self.room.add(e.worker)
        expiry = self._now + self.timing.expiry
        self._expiry_due = expiry if self._expiry_due is None else min(self._expiry_due, expiry)
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
        if shard.backup == w.worker_id and shard.state is S.LEASED:
            w.leases.add((job.job_id, shard.index), (job.job_id, shard.index))  # backup runs on
            return
        if shard.state in TERMINAL:
            return  # its result, resent, is a replay, or a second execution's (a duplicate)
        self._held_in_story(shard, w.worker_id, lease)
        if shard.lease and shard.lease != w.worker_id:
            return  # re-run elsewhere: whichever ends second is a counted duplicate
        if shard.state is S.QUEUED:
            job.ready.remove(shard.index)
        if shard.state is S.WAITING:
            job.move(shard, S.QUEUED, "held by reconnecting worker")
        if shard.state is S.QUEUED:
            job.move(shard, S.LEASED, f"held by reconnecting worker {w.worker_id}")
        shard.lease = w.worker_id
        w.leases.add((job.job_id, shard.index), (job.job_id, shard.index))

    def _held_in_story(self, shard: Shard, worker: str, lease: Lease) -> None:
        """An execution a restarted master did not know of joins the shard's story, from when
        the worker started it (numbered as it was given), ahead of any later attempt."""
        if shard.open_attempt(worker) is not None:
            return  # known: a reconnect without a restart
        known = find(shard.history, worker, lease.attempt)
        if known is not None:  # written off when its worker fell silent, yet it runs on
            known.ended, known.outcome, known.error = None, "running", None
            shard.story.append(f"attempt {lease.attempt} on {worker} runs on after all")
            return
        started = min(self._now, lease.started - self.wall_offset) if lease.started else self._now
        shard.history.append(Attempt(lease.attempt, worker, started))
        shard.history.sort(key=lambda a: a.started)
        shard.story.append(f"attempt {lease.attempt} on {worker} re-reported after a restart")

    def _on_left(self, e: ev.WorkerLeft) -> None:
        w = self.workers.pop(e.worker, None)
        if w is None:
            return
        handed = {(lease.job_id, lease.shard) for lease in e.handback}
        self._release_leases(w, charge=False, keep=set(), uncharged=handed)
        self.room.discard(e.worker)

    def _expire_workers(self) -> None:
        """Workers silent for the expiry time are lost; the next one due is noted (heard from
        since, it is due later: the note is only ever early, and the next Tick looks again)."""
        if self._expiry_due is not None and self._now < self._expiry_due:
            return
        for w in list(self.workers.values()):
            silence = self._now - w.last_seen
            if silence >= self.timing.expiry:
                del self.workers[w.worker_id]
                n = len(w.leases)
                self._release_leases(w, charge=True, keep=set(), silence=silence)
                self.room.discard(w.worker_id)
                self._out.append(ev.WorkerExpired(w.worker_id, n, silence))
        self._expiry_due = self._first_expiry()

    def _first_expiry(self) -> float | None:
        """When the longest silent worker expires, if it stays silent."""
        oldest = min((w.last_seen for w in self.workers.values()), default=None)
        return None if oldest is None else oldest + self.timing.expiry

    def _release_leases(
        self,
        w: Worker,
        *,
        charge: bool,
        keep: set[tuple[str, int]],
        uncharged: set[tuple[str, int]] | None = None,
        silence: float = 0.0,
    ) -> None:
        """Give a departed worker's shards back. A lost worker (expired, `charge`, or gone with
        a DISCONNECT, `uncharged`) charges an attempt to the shards it was executing: its
        oldest `slots` leases (it runs them in the order it got them); the rest were queued
        there, never started, and go back uncharged, as do handed-back shards. A worker that
        re-registers releases what it no longer holds, uncharged."""
        lost = charge or uncharged is not None
        executing = set(w.leases.executing(w.slots))
        err = lost_error(w.worker_id, silence if charge else None)
        for key in sorted(set(w.leases) - keep):
            task = w.leases.task_of(key)
            job = self.jobs[key[0]]
            shard = job.shards[key[1]]
            if shard.backup is not None and w.worker_id in (shard.lease, shard.backup):
                self._lose_racer(job, shard, w.worker_id, err)  # the other attempt runs on
                continue
            if shard.lease != w.worker_id or shard.state is not S.LEASED:
                continue
            shard.lease = None
            if uncharged is not None and key in uncharged:
                self._give_back(job, shard, "handed back", "handed back")
            elif not lost:
                self._give_back(job, shard, "released", "released on re-registration")
            elif task not in executing:
                self._give_back(job, shard, "never started", f"queued on lost worker {w.worker_id}")
            elif w.leases.batched(key):  # which shard of a batch ran is unknown: each runs alone
                shard.solo = True
                why = f"batch lost with worker {w.worker_id}"
                self._give_back(job, shard, "lost with its batch", why)
            else:
                self._charge(job, shard, err)

    # ---- shard results -------------------------------------------------------------------------

    def _end_race(self, job: Job, shard: Shard, winner: str | None) -> None:
        """A shard with a backup got its first result (from `winner`), or its job ended: the
        other attempt is cancelled on its worker, never charged."""
        if shard.backup is None:
            return
        for other in {shard.lease, shard.backup} - {winner, None}:
            assert other is not None
            w = self.workers.get(other)
            if w is not None:
                w.leases.drop((job.job_id, shard.index))
            self._out.append(ev.CancelOnWorker(other, job.job_id, (shard.index,)))
        shard.backup = None
        job.backups -= 1

    def _lose_racer(self, job: Job, shard: Shard, worker: str, err: ErrorInfo) -> None:
        """One of a shard's two attempts ended without a result (failed, or its worker was
        lost): it closes uncharged, and the other attempt carries on alone."""
        shard.close_attempt(self._now, f"{err.kind} (its twin runs on)", err, worker=worker)
        if shard.lease == worker:
            shard.lease = shard.backup
        shard.backup = None
        job.backups -= 1
        w = self.workers.get(worker)
        if w is not None:
            w.leases.drop((job.job_id, shard.index))
