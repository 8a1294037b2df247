"""The agent's child processes, one per slot: start, feed tasks, read replies, kill, describe a
death. What runs inside each child is `executor.py`.

A child may hold a short queue: small tasks written to its pipe behind the one it runs, so it
goes from one to the next without waiting for the agent (one wake-up for several tasks). The
queue's head is the task running; the next one starts when the head's reply is read.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from shardmill.errors import ProtocolError
from shardmill.wire.codec import Buffer, peek_kind
from shardmill.wire.protocol import ErrorInfo, Lease, ShardAttempt
from shardmill.worker.forked import Forked
from shardmill.worker.output import DEFAULT_LIMIT, ENV, new_file, tail
from shardmill.worker.pipes import read_frames, write_frames

QUEUE_DEPTH = 16  # the most tasks in a child's pipe (the running one included)...
PIPE_ROOM = 32 * 1024  # ...and their bytes: a write never fills the 64 KiB pipe and blocks us


@dataclass(frozen=True, slots=True)
class TaskHead:
    """What the agent reads of a task it hands a child as received: whose shard, its timeout,
    its batch. The child decodes and validates the whole `Task` (the agent's tasks are most of
    its messages: a full decode here cost about a fifth of its time)."""

    job_id: str
    shard: int
    attempt: int
    timeout: float | None = None
    more: tuple[tuple[int, int], ...] = ()  # a batch's other shards: (shard, attempt)
    echo: bool = False  # a client watches the job: what it prints is sent as it runs

    @classmethod
    def read(cls, header: dict[str, Any]) -> TaskHead:
        """From a `task` message's header (`codec.unpack_header`); ProtocolError if a field
        the agent needs is missing or of the wrong type."""
        try:
            batch = header.get("more", ())
            more = tuple((_count(m["shard"]), _count(m["attempt"])) for m in batch)
            timeout = header.get("timeout")
            if timeout is not None and not isinstance(timeout, _NUMBERS):
                raise TypeError(f"timeout {timeout!r}")
            job_id = header["job_id"]
            if not isinstance(job_id, str):
                raise TypeError(f"job_id {job_id!r}")
            shard, attempt = _count(header["shard"]), _count(header["attempt"])
        except (KeyError, TypeError) as e:
            raise ProtocolError(f"invalid 'task' message: {e}") from e
        return cls(job_id, shard, attempt, timeout, more, header.get("echo") is True)

    def more_attempts(self) -> list[ShardAttempt]:
        """The batch's other shards, as a reply names them."""
        return [ShardAttempt(shard=s, attempt=a) for s, a in self.more]


_NUMBERS = (int, float)  # a tuple: `int | float` is built at every call


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{value!r} is not a shard or attempt number")
    return value


@dataclass
class Running:
    """A task given to a child: running when at the head of its queue, else waiting there."""

    task: TaskHead
    frames: list[Buffer]
    size: int
    started: float = 0.0
    deadline: float | None = None
    dropped: bool = False  # cancelled while queued in the pipe: its reply is not sent
    echo: bool = False  # send what it prints as it runs (a client watches its job)
    echoed: int = 0  # bytes of its output sent so far

    @property
    def leases(self) -> list[Lease]:
        """Its shards, with the wall-clock time it started running (0 while it waits)."""
        started = self.started + time.time() - time.monotonic() if self.started else 0.0
        return task_leases(self.task, started)

    def begin(self, now: float) -> None:
        self.started = now
        self.deadline = now + self.task.timeout if self.task.timeout else None


def of(task: TaskHead, job: str, shards: set[int]) -> bool:
    """Whether `task` is one of the job's (of these shards only, when any are named)."""
    return task.job_id == job and (not shards or task.shard in shards)


def task_leases(task: TaskHead, started: float = 0.0) -> list[Lease]:
    """The shards a task holds: its own, and those of its batch."""
    pairs = [(task.shard, task.attempt), *task.more]
    return [Lease(job_id=task.job_id, shard=s, attempt=a, started=started) for s, a in pairs]


class ChildProcess:
    """One child process; the agent polls `fileno()` for its replies."""

    def __init__(
        self, worker_id: str, modules: list[str], *, fork: bool = False, limit: int = DEFAULT_LIMIT
    ) -> None:
        """A fresh interpreter, or with `fork` a copy of the agent (see forked.py); what it
        prints goes to a file of its own, its last `limit` bytes sent with each result."""
        self.output = new_file()
        self.limit = limit
        self.last_output = ""  # what it had printed when it was closed (killed, or dead)
        self.proc: subprocess.Popen[bytes] | Forked
        if fork:
            self.proc = Forked([worker_id, *modules], self.output.fileno(), limit)
        else:
            self.proc = self._popen([worker_id, *modules])
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.queue: collections.deque[Running] = collections.deque()
        self.queued_bytes = 0
        # Until the child says it is ready (its imports take ~0.5 s), a task written to its
        # pipe could fill the pipe and block the agent, and with it the heartbeats.
        self.ready = False

    def _popen(self, argv: list[str]) -> subprocess.Popen[bytes]:
        echo = os.dup(2)  # the worker's stderr, where what a task prints shows too
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "shardmill.worker.executor", *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.output,
                pass_fds=(echo,),
                env={**os.environ, ENV: f"{self.limit},{echo}"},
                bufsize=0,
            )
        finally:
            os.close(echo)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fileno(self) -> int:
        return self.fd

    @property
    def running(self) -> Running | None:
        """The task the child runs now."""
        return self.queue[0] if self.queue else None

    def held(self) -> list[Lease]:
        """The shards given to this child and still ours to report."""
        return [lease for run in self.queue if not run.dropped for lease in run.leases]

    def may_take(self, size: int, *, queue: bool) -> bool:
        """Whether a task of `size` bytes may be written now: at once when idle; with `queue`,
        behind the running one too, while the pipe keeps room for it."""
        if not self.ready:
            return False
        if not self.queue:
            return True
        return queue and len(self.queue) < QUEUE_DEPTH and self.queued_bytes + size <= PIPE_ROOM

    def finish(self, now: float) -> Running:
        """The head's reply is in: it leaves the queue, and the next task starts."""
        done = self.queue.popleft()
        self.queued_bytes -= done.size
        if self.queue:
            self.queue[0].begin(now)
        return done

    def waiting(self) -> list[Running]:
        """Tasks written to the child but not started, taken back (to run elsewhere); the
        child itself is about to be replaced."""
        rest = list(self.queue)[1:]
        for run in rest:
            self.queue.remove(run)
            self.queued_bytes -= run.size
        return rest

    def has_output(self) -> bool:
        """Whether the child has written something not read yet (its result, or its EOF)."""
        return bool(select.select([self.fd], [], [], 0)[0])

    def start(self, run: Running, now: float) -> bool:
        """Hand the child a task (the frames as the master sent them); False if it is dead."""
        if not self.queue:
            run.begin(now)
        self.queue.append(run)
        self.queued_bytes += run.size
        assert self.proc.stdin is not None
        try:
            write_frames(self.proc.stdin, run.frames)  # type: ignore[arg-type]
        except (BrokenPipeError, OSError):
            return False
        return True

    def read_ready(self) -> bool:
        """The child's first message, an empty one once its imports are done; False if it died."""
        try:
            frames = read_frames(self.proc.stdout)  # type: ignore[arg-type]
        except EOFError:
            return False
        self.ready = frames == []
        return self.ready

    def read(self) -> tuple[str, list[memoryview]] | None:
        """The kind of the child's reply and its raw frames (forwarded as they are; the
        master decodes them), or None when it died (EOF or cut off)."""
        assert self.proc.stdout is not None
        try:
            frames = read_frames(self.proc.stdout)  # type: ignore[arg-type]
        except EOFError:
            return None
        if not frames:
            return None
        try:
            return peek_kind(frames[0]), frames
        except ProtocolError:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.close()

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.output.closed:  # the child is gone: what it printed last is all there
            self.last_output = tail(self.output.fileno(), self.limit)
            self.output.close()

    def death(self) -> ErrorInfo:
        """Describe how the child died: exit code or signal name, for the failure report."""
        self.close()
        code = self.proc.returncode
        if code is not None and code < 0:
            name = _signal_name(-code)
            return ErrorInfo(
                kind="crash",
                type="ChildCrashed",
                signal=name,
                message=f"child process {self.pid} was killed by {name}",
                output=self.last_output,
            )
        return ErrorInfo(
            kind="crash",
            type="ChildCrashed",
            exit_code=code,
            message=f"child process {self.pid} exited with code {code} mid-shard",
            output=self.last_output,
        )


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def wait_all(children: list[ChildProcess], timeout: float) -> None:
    """Close children politely (stdin EOF ends their loop), then kill what is left."""
    deadline = time.monotonic() + timeout
    for child in children:
        if child.proc.stdin is not None:
            with contextlib.suppress(OSError):
                child.proc.stdin.close()
    for child in children:
        try:
            child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
        child.close()


__all__ = ["ChildProcess", "Running", "TaskHead", "task_leases", "wait_all"]
