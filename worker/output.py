"""What a task prints: a child's stdout and stderr go to an unlinked file of its slot's own.

The agent makes the file and hands it to the child as its fd 1 and 2, keeping a descriptor of
the same open file: so what a task printed stays readable after its child dies of SIGKILL
mid-shard. After each task the child takes the file's tail (the last `limit` bytes) into its
reply and empties the file; a task that printed nothing costs one `lseek`, no read.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import IO

ENV = "SHARDMILL_OUTPUT"  # "LIMIT,FD": the tail kept, and where the worker's own stderr is
DEFAULT_LIMIT = 1 << 20


def new_file() -> IO[bytes]:
    """A slot's output file: unlinked at once, so nothing is left behind on any exit."""
    return tempfile.TemporaryFile(prefix="shardmill-output-")


def tail(fd: int, limit: int) -> str:
    """The last `limit` bytes written to `fd`'s file, as text (a cut character is replaced)."""
    return as_text(*_tail_bytes(fd, limit))


def _tail_bytes(fd: int, limit: int) -> tuple[bytes, int]:
    end = os.fstat(fd).st_size
    start = max(0, end - max(0, limit))
    return (os.pread(fd, end - start, start) if end > start else b""), start


def as_text(data: bytes, dropped: int) -> str:
    head = f"[... {dropped:,} earlier bytes dropped]\n" if dropped else ""
    return head + data.decode("utf-8", "replace")


@dataclass
class Capture:
    """In the child: fd 1 and 2 write to the slot's file; `take` empties it after each task."""

    fd: int  # the file (fd 2; fd 1 is a copy of it)
    limit: int
    echo: int  # the worker's own stderr: what a task prints shows there too, as before

    @classmethod
    def from_env(cls) -> Capture | None:
        """As the agent set it up; None when the executor runs without an agent (by hand)."""
        spec = os.environ.pop(ENV, "")
        if not spec:
            return None
        limit, echo = (int(x) for x in spec.split(","))
        return cls(2, limit, echo)

    def take(self) -> str:
        """What the last task printed (its tail), and an empty file for the next one."""
        sys.stderr.flush()  # sys.stdout is sys.stderr in the child
        if os.lseek(self.fd, 0, os.SEEK_CUR) == 0:
            return ""
        data, dropped = _tail_bytes(self.fd, self.limit)
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        with contextlib.suppress(OSError):  # a closed terminal must not fail the task
            os.write(self.echo, data)
        return as_text(data, dropped)
