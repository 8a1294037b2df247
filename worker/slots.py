"""The agent's children and the tasks waiting for one: which child runs what, a child's death
or timeout as the shard's failure, a cancel, a drain's hand-back.

The agent owns the socket: a child's reply leaves through its `forward`, a failure found here
through its `report`.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from shardmill.wire.codec import Buffer
from shardmill.wire.protocol import ErrorInfo, Lease
from shardmill.worker.echo import POLL, Echo, Send
from shardmill.worker.output import DEFAULT_LIMIT
from shardmill.worker.runner import ChildProcess, Running, TaskHead, of, task_leases, wait_all

log = logging.getLogger(__name__)
# A child's pipe holds tasks behind its running one only when every task in it is of a job
# whose shards ran this briefly here (seconds): a wake-up per task is then much of their cost.
# Longer ones wait in the agent, where a drain hands them back unstarted; the pipe's few run
# out within a drain's grace.
QUEUE_BELOW = 0.02
Report = Callable[[TaskHead, ErrorInfo, float], None]  # a shard failed here: task, why, started
Forward = Callable[[Running, list[memoryview], float], None]  # a child's reply, as written


class Slots:
    """One child per slot, and the short shards the master sent beyond them."""

    def __init__(
        self,
        worker_id: str,
        imports: list[str],
        count: int,
        report: Report,
        forward: Forward,
        *,
        output_bytes: int = DEFAULT_LIMIT,
        echo: Send | None = None,
    ) -> None:
        self.worker_id, self.imports = worker_id, imports
        self.output_bytes = output_bytes  # the tail of what a task prints, sent with its end
        self.children = [self._spawn(fork=True) for _ in range(count)]  # before any zmq
        self.pending: collections.deque[Running] = collections.deque()  # not given a child yet
        self.brief: dict[str, float] = {}  # job -> the run time of its latest shard here
        self.handback: list[Lease] = []  # shards a drain gives back to the master, unstarted
        self.draining = False
        self.poller: zmq.Poller | None = None
        self._report, self._forward = report, forward
        self.echo = Echo(echo)
        self.echoing = False  # a watched task came here once: look for them from now on

    def register(self, poller: zmq.Poller) -> None:
        self.poller = poller
        for child in self.children:
            poller.register(child.fileno(), zmq.POLLIN)

    def add(self, task: TaskHead, frames: list[Buffer]) -> None:
        """A task from the master: it waits for a child (forwarded to it as received)."""
        if self.draining:
            self.handback.extend(task_leases(task))
        else:
            size = sum(memoryview(f).nbytes for f in frames)
            self.pending.append(Running(task, frames, size, echo=task.echo))
            self.echoing = self.echoing or task.echo

    def step(self, ready: dict[Any, int], now: float) -> None:
        """Replies the poll found, timeouts, then pending tasks to free children."""
        for child in list(self.children):
            if child.fileno() in ready:
                self._on_child(child)
        self._check_timeouts(now)
        self._assign(now)
        if self.echoing:
            self.echo.poll(self.children)

    def held(self) -> list[Lease]:
        """Every shard this worker holds: in its children, and waiting for one."""
        held = [lease for c in self.children for lease in c.held()]
        return held + [lease for run in self.pending for lease in run.leases]

    def deadlines(self) -> list[float]:
        found = [r.deadline for c in self.children if (r := c.running) and r.deadline]
        if self.echoing and any((r := c.running) and r.echo for c in self.children):
            found.append(time.monotonic() + POLL)  # a watched task: look at its output again
        return found

    def echo_job(self, job: str) -> None:
        """A client now watches the job: its tasks here send what they print from now on
        (what they printed so far included)."""
        for run in [*self.pending, *(r for c in self.children for r in c.queue)]:
            run.echo = run.echo or run.task.job_id == job
            self.echoing = self.echoing or run.echo

    def collect(self) -> None:
        """Replies children have already written: sent now, not held back."""
        for child in [c for c in self.children if c.running and c.has_output()]:
            self._on_child(child)

    # ---- children ------------------------------------------------------------------------------

    def _spawn(self, fork: bool = False) -> ChildProcess:
        return ChildProcess(self.worker_id, self.imports, fork=fork, limit=self.output_bytes)

    def _replace(self, child: ChildProcess) -> None:
        assert self.poller is not None
        self.poller.unregister(child.fileno())
        child.kill()
        fresh = self._spawn()
        self.children[self.children.index(child)] = fresh
        self.poller.register(fresh.fileno(), zmq.POLLIN)

    def _assign(self, now: float) -> None:
        """Pending tasks to children: an idle one first, else queued behind a running one."""
        while self.pending:
            run = self.pending[0]
            # A watched task is not queued behind another: its output is told apart by time.
            brief = self._brief(run.task.job_id) and not run.echo
            free = [
                c
                for c in self.children
                if c.may_take(
                    run.size,
                    queue=brief and all(self._brief(r.task.job_id) and not r.echo for r in c.queue),
                )
            ]
            if not free:
                return
            child = min(free, key=lambda c: len(c.queue))
            if not child.queue and child.has_output():  # idle yet readable: its EOF came
                self._report_death(child)  # after this turn's poll: replaced, nothing charged
                continue
            self.pending.popleft()
            if not child.start(run, now):
                if child.running is run:  # it died idle before the task reached it
                    child.queue.clear()
                    child.queued_bytes = 0
                    self.pending.appendleft(run)
                self._report_death(child)

    def _on_child(self, child: ChildProcess) -> None:
        """Every reply the child has written (its queue runs on meanwhile)."""
        if not child.ready:
            if not child.read_ready():
                self._report_death(child)
            return
        while True:  # readable with nothing given it: it died idle (EOF), or misbehaves
            got = child.read()
            if got is None or got[0] not in ("done", "failed") or not child.queue:
                if got is not None:
                    log.error("child %d sent an unexpected %s; replacing it", child.pid, got[0])
                self._report_death(child)
                break
            now = time.monotonic()
            run = child.finish(now)
            self._timed(run.task.job_id, now - run.started)
            if not run.dropped:
                self.echo.rest_of_reply(run, got[1])
                self._forward(run, got[1], now)
            if not child.queue or not child.has_output():
                break
        self._assign(time.monotonic())

    def _brief(self, job: str) -> bool:
        return self.brief.get(job, QUEUE_BELOW) < QUEUE_BELOW

    def _timed(self, job: str, seconds: float) -> None:
        self.brief[job] = seconds
        if len(self.brief) > 64:  # the jobs of late: forget the oldest
            del self.brief[next(iter(self.brief))]

    def _retire(self, child: ChildProcess) -> None:
        """Replace a child that must go; the tasks waiting in its pipe wait for a child again
        (or, in a drain, go back to the master)."""
        waiting = child.waiting()
        self._replace(child)
        for run in reversed(waiting):
            if run.dropped:
                continue
            if self.draining:
                self.handback.extend(run.leases)
            else:
                self.pending.appendleft(run)

    def _report_death(self, child: ChildProcess) -> None:
        running = child.running
        err = child.death()  # before replacing: the exit code, not our SIGKILL, tells the story
        self._retire(child)
        if running is None or running.dropped:
            what = "idle" if running is None else "a cancelled shard's"
            log.warning("%s child %d died (%s); replaced", what, child.pid, err.message)
            return
        log.warning("shard %s/%d: %s", running.task.job_id, running.task.shard, err.message)
        self.echo.rest(running, err.output)
        self._report(running.task, err, running.started)

    def _check_timeouts(self, now: float) -> None:
        for child in list(self.children):
            run = child.running
            if run is None or run.deadline is None or now < run.deadline:
                continue
            self._retire(child)
            if run.dropped:  # cancelled while it waited in the pipe: nobody wants its end
                continue
            timeout = run.task.timeout
            log.warning(
                "shard %s/%d exceeded task_timeout=%ss; child killed",
                run.task.job_id,
                run.task.shard,
                timeout,
            )
            err = child.death().model_copy(
                update={
                    "kind": "timeout",
                    "type": "TaskTimeout",
                    "message": f"shard ran past task_timeout={timeout}s; its child was killed",
                }
            )
            self._report(run.task, err, run.started)

    def cancel(self, job: str, shards: set[int]) -> None:
        """Drop the job's tasks (only those of `shards`, when named: a backup race ended)."""
        self.pending = collections.deque(r for r in self.pending if not of(r.task, job, shards))
        for child in list(self.children):
            for queued in list(child.queue)[1:]:  # in its pipe: run, but not reported
                queued.dropped = queued.dropped or of(queued.task, job, shards)
            if (run := child.running) is not None and of(run.task, job, shards):
                log.info("cancelling shard %s/%d", job, run.task.shard)
                self._retire(child)

    # ---- drain and shutdown --------------------------------------------------------------------

    def drain(self) -> None:
        """Take no more: what waits for a child goes back to the master unstarted."""
        self.draining = True
        self.handback.extend(lease for run in self.pending for lease in run.leases)
        self.pending.clear()

    def busy(self) -> list[ChildProcess]:
        """Children with a shard still to report (running, or waiting in the pipe)."""
        return [c for c in self.children if any(not r.dropped for r in c.queue)]

    def stop(self, children: list[ChildProcess]) -> None:
        """A drain's grace is over: stop them and hand their shards back uncharged."""
        for child in children:
            self.handback.extend(child.held())
            child.queue.clear()
            child.kill()

    def close(self, timeout: float) -> None:
        wait_all(self.children, timeout=timeout)
