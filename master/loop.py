"""The master's one poll loop: owns both ROUTER sockets, feeds the brain, carries out commands."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from shardmill.config import MasterSettings
from shardmill.errors import ConfigError, StateDirError
from shardmill.health import HealthFile
from shardmill.master.brain import events as ev
from shardmill.master.checkpoint import Checkpointer
from shardmill.master.clients import ClientRequests
from shardmill.master.core import Core, Peers, bind_router, new_brain, new_segments
from shardmill.master.endings import Endings
from shardmill.master.metrics import Metrics
from shardmill.master.pipelines import Pipelines
from shardmill.master.workers import Result, WorkerMessages
from shardmill.ops.registry import Registry
from shardmill.wire.handshake import PortWatch, RefusalLog
from shardmill.wire.protocol import CancelTasks, MasterPing, Reregister
from shardmill.wire.security import Security

log = logging.getLogger(__name__)
_JOB_OUTPUT = (ev.MergeShard, ev.FinalizeJob)  # a tuple: `A | B` is built at every call
Executor = Callable[[Any, Result | None], ev.Event | None]


class MasterLoop:
    """Binds the worker and client ports and serves until stopped."""

    def __init__(self, settings: MasterSettings, registry: Registry) -> None:
        self.settings = settings
        # Open the state dir first: a locked or corrupt one must stop us before we bind ports.
        checkpoint = Checkpointer(settings.state_dir)
        data, restored = checkpoint.restore(registry)
        self.core = Core(
            settings=settings,
            brain=new_brain(settings),
            checkpoint=checkpoint,
            registry=registry,
            segments=new_segments(settings),  # after the state dir's lock is ours
            data=data,
            peers=Peers(),
            metrics=Metrics(),
            apply=self.apply,
        )
        self.executors = self._executor_table()
        self.metrics = self.core.metrics
        self.metrics.snapshot.shuffle = self.core.peers.shuffle
        if checkpoint.store is not None:
            checkpoint.store.on_commit = self.metrics.commit_seconds.observe
        self.pipelines = self._restore(restored)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.security = Security.resolve(settings.keys, settings.insecure, "master")
        # The metrics port first: a busy one stops us before the ZMQ ports and ZAP start.
        self.metrics_server = self.metrics.serve(settings.host, settings.metrics_port)
        self.refusals = RefusalLog()
        self.auth = self.security.authenticator(self.ctx, self.refusals)  # ZAP before we bind
        bind = functools.partial(bind_router, self.ctx, settings, self.security)
        keyring = None if self.auth is None else self.auth.keyring
        self.workers = WorkerMessages(self.core, bind("workers"), self.apply_all, keyring)
        self.clients = ClientRequests(self.core, bind("clients"), keyring)
        self.endings = Endings(self.core, self.clients, self.pipelines)
        self.watches = [  # handshakes that fail before ZAP: a CURVE/plaintext mix-up
            PortWatch(sock, name=name, insecure=self.security.insecure, refusals=self.refusals)
            for name, sock in [("worker", self.workers.sock), ("client", self.clients.sock)]
        ]
        self._next_beat = 0.0
        self.health = HealthFile(settings.health_file, f"master pid {os.getpid()}")
        self._next_prune = time.monotonic() + 2.0  # decodes the summaries: not before answering

    def _restore(self, restored: Sequence[ev.Event]) -> Pipelines:
        """The state dir's jobs, then pipelines, back as they were (no worker is here yet)."""
        pipelines = self.core.pipelines = Pipelines(self.core, self.settings.state_dir)
        for event in restored:
            self.apply(event)
        self.apply(ev.RestoreDone())
        pipelines.restore()
        return pipelines

    def _executor_table(self) -> dict[type, Executor]:
        """What the loop does for each command the brain gives."""
        return {
            ev.Admitted: lambda cmd, result: None,  # the caller reads these two
            ev.Refused: lambda cmd, result: None,
            ev.Pruned: lambda cmd, result: self.endings.forget(cmd, result),
            ev.Forgotten: lambda cmd, result: self.endings.forgotten(cmd, result),
            ev.Holding: lambda cmd, result: log.info(
                "resuming %d unfinished job(s) of %d", cmd.unfinished, cmd.jobs
            ),
            ev.SendTask: self._send_task,
            ev.MergeShard: self._merge,
            ev.FinalizeJob: lambda cmd, result: self.endings.finalize(cmd, result),
            ev.JobEnded: lambda cmd, result: self.endings.ended(cmd, result),
            ev.CancelOnWorker: lambda c, r: self.workers.send(
                c.worker, CancelTasks(job_id=c.job_id, shards=list(c.shards))
            ),
            ev.AskReregister: lambda cmd, result: self.workers.send(cmd.worker, Reregister()),
            ev.WorkerExpired: self._expired,
            ev.DropDuplicate: self._duplicate,
            ev.JobStarted: lambda c, r: self.core.checkpoint.job_started(c.job_id, c.started_at),
            ev.AttemptsGiven: lambda c, r: self.core.checkpoint.attempts_given(c.job_id, c.high),
            ev.StoryChanged: self._story_changed,
        }

    def endpoints(self) -> dict[str, str]:
        ep_w = self.workers.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        ep_c = self.clients.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        out = {"workers": ep_w, "clients": ep_c}
        if self.metrics_server is not None:
            port = self.metrics_server.server_port
            out["metrics"] = f"http://{self.settings.host}:{port}/metrics"
        return out

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT; announce the bound endpoints on stdout as a JSON line."""
        # Signals arrive on a wake-up pipe the poll loop reads, never as an exception that
        # could fire (and be swallowed) inside library code.
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)
        print(
            json.dumps({"event": "listening", "pid": os.getpid(), **self.endpoints()}), flush=True
        )
        log.info("master listening %s", self.endpoints())
        poller = zmq.Poller()
        poller.register(self.workers.sock, zmq.POLLIN)
        poller.register(self.clients.sock, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        for watch in self.watches:
            poller.register(watch.monitor, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll(self._poll_timeout_ms()))
                if wake_r in ready and self._signalled(os.read(wake_r, 64)):
                    break
                if self.workers.sock in ready:
                    self._drain(self.workers.sock, self.workers.on_frames, self.workers.report_all)
                if self.clients.sock in ready:
                    self._drain(self.clients.sock, self.clients.on_frames)
                for watch in self.watches:
                    if watch.monitor in ready:
                        watch.check()
                self._timers()
                self.workers.flush()  # what this turn decided for each worker, in one go
                self.core.checkpoint.commit(time.monotonic())  # grouped: Checkpointer.commit
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            self.close()

    def _signalled(self, signals: bytes) -> bool:
        """SIGHUP reads the key folders again (a deleted key is refused from now on); any
        other signal stops the master. True to stop."""
        if any(s != signal.SIGHUP for s in signals):
            log.info("master stopping (signal %d)", next(s for s in signals if s != signal.SIGHUP))
            return True
        if self.auth is None:
            log.info("SIGHUP: no keys to read again (--insecure)")
            return False
        try:
            log.info("SIGHUP: key folders read again: %s", self.auth.keyring.load())
        except ConfigError as e:  # a bad file must not stop the master: the old keys stay
            log.error("SIGHUP: keys not reloaded, the previous ones stay in force: %s", e)
        return False

    def close(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        for watch in self.watches:
            watch.close()
        self.workers.sock.close(linger=0)
        self.clients.sock.close(linger=0)
        try:
            self.core.checkpoint.close()
        finally:
            self.core.segments.close()  # a resumed job's inputs come from the state dir
            if self.auth is not None:
                self.auth.stop()

    def _drain(
        self,
        sock: zmq.Socket[bytes],
        handle: Callable[[list[Any]], None],
        then: Callable[[], None] = lambda: None,
    ) -> None:
        """Handle what waits on `sock` (at most 1,000 messages), then `then` (the worker
        socket's results, to the brain at once)."""
        for _ in range(1000):  # bounded, so one busy socket cannot starve the other or timers
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            handle(frames)
            # A handler's boundary may have caught a failed write (a refused submit is answered
            # "state"): stop before the next message is answered from state not on disk.
            self.core.checkpoint.check()
        then()
        self.core.checkpoint.check()

    def _poll_timeout_ms(self) -> int:
        now = time.monotonic()
        deadline = min(
            self._next_beat,
            self.core.brain.next_deadline() or self._next_beat,
            self.core.checkpoint.flush_deadline() or self._next_beat,
        )
        return max(0, int((deadline - now) * 1000) + 1)

    def _timers(self) -> None:
        now = time.monotonic()
        core = self.core
        deadline = core.brain.next_deadline()
        if deadline is not None and deadline <= now:
            self.apply(ev.Tick())
        core.segments.expire(now)
        core.segments.drop_unowned()  # a refused submit's mappings (its client deletes the file)
        for run in self.pipelines.step():  # stages ended this turn: the next ones start
            self.clients.answer_pipeline(run)
        self.clients.streams.flush(now)  # results merged this turn, to those who stream them
        retention = self.settings.job_retention
        if retention is not None and now >= self._next_prune:
            self._next_prune = now + 60.0
            self.apply(ev.PruneRequested(retention, core.waited_on()))
        if now >= self._next_beat:
            self._next_beat = now + self.settings.heartbeat_interval
            self.health.touch(now, 0.0)  # the loop turns and its sockets are bound
            if self.metrics_server is not None:  # what --metrics-port serves between beats
                self.metrics.snapshot.observe(core.brain, now)
            for worker in list(core.brain.workers):
                self.workers.send(worker, MasterPing(sent=now))

    # ---- commands ------------------------------------------------------------------------------

    def apply(self, event: ev.Event) -> list[ev.Command]:
        """Feed the brain `event`, carry out its commands and the events they lead to; returns
        every command, for callers that ask."""
        return self.apply_all([(event, None)])

    def apply_all(self, items: Sequence[tuple[ev.Event, Result | None]]) -> list[ev.Command]:
        """As `apply`, for events that arrived together (a drain of the worker socket): the
        brain takes them at once and hands out work once. A shard's result rides along with
        its event, for the merge; a job whose merge fails is broken, and nothing more of it
        is merged or finalized in this batch."""
        results = self._observe(items)
        pending: list[Sequence[ev.Event]] = [[event for event, _ in items]]
        commands: list[ev.Command] = []
        broken: set[str] = set()
        while pending:
            for cmd in self.core.brain.handle_all(pending.pop(0), time.monotonic()):
                commands.append(cmd)
                if isinstance(cmd, _JOB_OUTPUT) and cmd.job_id in broken:
                    continue  # its JobBroken follows: it fails, with the reason
                merged = None
                if isinstance(cmd, ev.MergeShard):
                    merged = results.get((cmd.job_id, cmd.shard, cmd.worker, cmd.attempt))
                follow_up = self.executors[type(cmd)](cmd, merged)
                if isinstance(follow_up, ev.JobBroken):
                    broken.add(follow_up.job_id)
                if follow_up is not None:
                    pending.append([follow_up])
        return commands

    def _observe(
        self, items: Sequence[tuple[ev.Event, Result | None]]
    ) -> dict[tuple[str, int, str, int], Result]:
        """What workers report, into the metrics; each result by whose it is (job, shard,
        worker, attempt), as the brain's MergeShard names it."""
        results: dict[tuple[str, int, str, int], Result] = {}
        for event, result in items:
            match event:
                case ev.ShardSucceeded(duration=seconds):
                    self.metrics.shard_seconds.observe(seconds)
                    if result is not None:  # a worker's resent copy is the same result
                        key = (event.job_id, event.shard, event.worker, event.attempt)
                        results.setdefault(key, result)
                case ev.ShardFailed(error=error):
                    self.metrics.attempts_failed.labels(error.kind).inc()
                    self._bundle(event)
        return results

    def _bundle(self, e: ev.ShardFailed) -> None:
        job, data = self.core.brain.jobs.get(e.job_id), self.core.data.get(e.job_id)
        if job is not None and data is not None:
            cap = self.settings.replay_bundle_bytes
            self.core.checkpoint.attempt_failed(e, data, job.spec, cap)

    def _send_task(self, cmd: ev.SendTask, result: Result | None) -> None:
        spec, data = self.core.brain.jobs[cmd.job_id].spec, self.core.data[cmd.job_id]
        header, arrays = data.task(
            cmd.job_id, cmd.shard, cmd.attempt, op=spec.op, timeout=spec.task_timeout, more=cmd.more
        )
        if data.segments and cmd.worker in self.core.peers.shares_memory:  # it maps the pages
            arrays, refs = self.core.segments.refs(arrays)
            header = data.with_refs(header, refs)
        self.workers.send_header(cmd.worker, header, arrays)
        if cmd.backup:
            self.metrics.backups.inc()

    def _merge(self, cmd: ev.MergeShard, result: Result | None) -> ev.Event | None:
        """Fold a shard's (or a batch's) partial in, and checkpoint each shard it covers."""
        assert result is not None, "a merge needs the result in hand"
        j, s = cmd.job_id, cmd.shard
        data, job = self.core.data[j], self.core.brain.jobs[j]
        started = time.perf_counter()
        try:
            data.merger.add(s, *result, more=cmd.more)
            offset = self.core.brain.wall_offset
            for index in (s, *cmd.more):
                self.core.checkpoint.shard_merged(j, job.shards[index], data, result, offset=offset)
        except StateDirError:
            raise  # crash-only: the next master resumes from the last commit
        except Exception as e:  # the op's own combine runs here: whatever it raises
            log.warning("job %s: shard %d result cannot be merged: %s", j, s, e)
            return ev.JobBroken(j, f"shard {s} returned a result that cannot be merged: {e}")
        self.metrics.merge_seconds.observe(time.perf_counter() - started)
        self.metrics.shards_done.inc(1 + len(cmd.more))
        return None

    def _story_changed(self, cmd: ev.StoryChanged, result: Result | None) -> None:
        job = self.core.brain.jobs.get(cmd.job_id)
        if job is not None and not job.finished:  # a job's end writes every story itself
            shard = job.shards[cmd.shard]
            self.core.checkpoint.unmerged(cmd.job_id, shard, offset=self.core.brain.wall_offset)

    def _duplicate(self, cmd: ev.DropDuplicate, result: Result | None) -> None:
        if cmd.resent:
            what = "a copy of the merged execution's result, sent again"
        else:
            what = "a second execution's result" if cmd.stories else "a late result"
        self.metrics.duplicates.inc(len(cmd.stories))
        self.metrics.resent.inc(int(cmd.resent))
        log.info("job %s shard %d: %s from %s dropped", cmd.job_id, cmd.shard, what, cmd.worker)
        job = self.core.brain.jobs.get(cmd.job_id)
        if job is not None:  # the stories and the count outlive a restart
            offset = self.core.brain.wall_offset
            stories = [job.shards[i] for i in cmd.stories]
            self.core.checkpoint.dropped(cmd.job_id, stories, resent=job.resent, offset=offset)

    def _expired(self, cmd: ev.WorkerExpired, result: Result | None) -> None:
        self.metrics.shards_requeued.inc(cmd.requeued)
        self.core.peers.forget(cmd.worker)
        log.warning(
            "worker %s expired after %.1f s of silence; %d shards requeued",
            cmd.worker,
            cmd.silence,
            cmd.requeued,
        )
