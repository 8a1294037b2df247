"""The agent's child processes, one per slot: start, feed a task, read its reply, kill, describe a
death. What runs inside each child is `executor.py`."""

from __future__ import annotations

import contextlib
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from shardmill.errors import ProtocolError
from shardmill.wire.codec import Buffer, Decoded, decode
from shardmill.wire.protocol import ErrorInfo, Lease, Task
from shardmill.worker.forked import Forked
from shardmill.worker.pipes import read_frames, write_frames


@dataclass
class Running:
    task: Task
    started: float
    deadline: float | None

    @property
    def leases(self) -> list[Lease]:
        return task_leases(self.task)


def of(task: Task, job: str, shards: set[int]) -> bool:
    """Whether `task` is one of the job's (of these shards only, when any are named)."""
    return task.job_id == job and (not shards or task.shard in shards)


def task_leases(task: Task) -> list[Lease]:
    """The shards a task holds: its own, and those of its batch."""
    first = Lease(job_id=task.job_id, shard=task.shard, attempt=task.attempt)
    return [first] + [
        Lease(job_id=task.job_id, shard=m.shard, attempt=m.attempt) for m in task.more
    ]


class ChildProcess:
    """One child process; the agent polls `fileno()` for its replies."""

    def __init__(self, worker_id: str, modules: list[str], *, fork: bool = False) -> None:
        """A fresh interpreter, or with `fork` a copy of the agent (see forked.py)."""
        self.proc: subprocess.Popen[bytes] | Forked
        if fork:
            self.proc = Forked([worker_id, *modules])
        else:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shardmill.worker.executor", worker_id, *modules],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.running: Running | None = None
        # Until the child says it is ready (its imports take ~0.5 s), a task written to its
        # pipe could fill the pipe and block the agent, and with it the heartbeats.
        self.ready = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fileno(self) -> int:
        return self.fd

    def has_output(self) -> bool:
        """Whether the child has written something not read yet (its result, or its EOF)."""
        return bool(select.select([self.fd], [], [], 0)[0])

    def start(self, task: Task, frames: list[Buffer], now: float) -> bool:
        """Hand the child a task (the frames as the master sent them); False if it is dead."""
        deadline = now + task.timeout if task.timeout else None
        self.running = Running(task, now, deadline)
        assert self.proc.stdin is not None
        try:
            write_frames(self.proc.stdin, frames)  # type: ignore[arg-type]
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

    def read(self) -> tuple[Decoded, list[memoryview]] | None:
        """The child's reply and its raw frames, or None when it died (EOF or cut off)."""
        assert self.proc.stdout is not None
        try:
            frames = read_frames(self.proc.stdout)  # type: ignore[arg-type]
        except EOFError:
            return None
        if frames is None:
            return None
        try:
            return decode(frames), frames
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
            )
        return ErrorInfo(
            kind="crash",
            type="ChildCrashed",
            exit_code=code,
            message=f"child process {self.pid} exited with code {code} mid-shard",
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


__all__ = ["ChildProcess", "Running", "task_leases", "wait_all"]
