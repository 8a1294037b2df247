"""A watched job's task output arriving at a client: printed as it comes, each line prefixed
with its shard and worker (`client.map(..., echo=True)`, `shardmill watch JOB --logs`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from shardmill.wire.protocol import Message, TaskOutput, WatchOutput

if TYPE_CHECKING:
    from shardmill.client import Client


def show_output(msg: Message) -> None:
    """Print a TaskOutput's lines; any other message that is not the awaited reply (a stale
    one) is skipped."""
    if isinstance(msg, TaskOutput):
        prefix = f"[shard {msg.shard} {msg.worker}]"
        sys.stdout.write("".join(f"{prefix} {line}\n" for line in msg.text.splitlines()))
        sys.stdout.flush()


def watch_output(client: Client, job_id: str) -> None:
    """Ask the master to send `client` the job's task output as it is printed (its running
    tasks' output so far included); it arrives while the client waits on any reply."""
    client._request(WatchOutput(job_id=job_id))
