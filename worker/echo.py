"""Live output: what the tasks of a watched job print is sent to the master as they print it.

Read from the slot's output file (output.py) between polls, whole lines only, while the task
runs; what is left when it ends is taken from its reply, which holds all it printed. Only a
task flagged `echo` is looked at: the others cost nothing here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from shardmill.errors import ProtocolError
from shardmill.wire.codec import unpack_header
from shardmill.wire.protocol import TaskOutput

if TYPE_CHECKING:
    from shardmill.worker.runner import ChildProcess, Running

POLL = 0.1  # seconds between looks at a watched task's output
Send = Callable[[TaskOutput], None]


class Echo:
    """Sends watched tasks' new output lines through `send` (the agent's socket)."""

    def __init__(self, send: Send | None) -> None:
        self._send = send

    def poll(self, children: Sequence[ChildProcess]) -> None:
        """New whole lines of each watched task running now."""
        for child in children:
            run = child.running
            if run is None or not run.echo or child.output.closed:
                continue
            fd = child.output.fileno()
            size = os.fstat(fd).st_size
            if size <= run.echoed:  # nothing new, or emptied: its reply is on its way
                continue
            data = os.pread(fd, size - run.echoed, run.echoed)
            cut = data.rfind(b"\n") + 1
            if cut:
                self._out(run, data[:cut])
                run.echoed += cut

    def rest(self, run: Running, printed: str) -> None:
        """At the attempt's end: what it printed beyond the lines already sent."""
        if not run.echo or printed.startswith("[... "):  # a cut tail: its offsets are lost
            return
        if data := printed.encode()[run.echoed :]:
            self._out(run, data)

    def rest_of_reply(self, run: Running, frames: Sequence[memoryview]) -> None:
        """As `rest`, with what a child's reply (as written) says it printed."""
        if not run.echo:
            return
        try:
            header = unpack_header(frames[0])
        except ProtocolError:
            return
        error = header.get("error")
        printed = error.get("output", "") if isinstance(error, dict) else header.get("output", "")
        if isinstance(printed, str):
            self.rest(run, printed)

    def _out(self, run: Running, data: bytes) -> None:
        if self._send is not None:
            task = run.task
            text = data.decode("utf-8", "replace")
            self._send(
                TaskOutput(job_id=task.job_id, shard=task.shard, attempt=task.attempt, text=text)
            )
