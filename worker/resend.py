"""Results a worker keeps after sending them: a master that vanished may never have merged them.
And what a result the master would not read becomes instead.

Sent again after a reconnect or when a restarted master asks the worker to register again;
the master merges the first copy of each shard and counts the rest as duplicates.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from shardmill.wire.protocol import ErrorInfo

MAX_RESEND = 10_000  # results kept for resending after a reconnect...
MAX_RESEND_BYTES = 256 * 2**20  # ...and their bytes


class Recent:
    """What was sent since the master was last heard, bounded so a long outage cannot eat the
    worker's memory."""

    def __init__(self) -> None:
        self.sent: collections.deque[tuple[float, list[Any], int]] = collections.deque()
        self.nbytes = 0

    def keep(self, now: float, frames: list[Any], size: int, horizon: float) -> None:
        """Remember `frames` (`size` bytes) sent at `now`; forget what was sent before
        `horizon`."""
        self.sent.append((now, frames, size))
        self.nbytes += size
        while self.sent and (
            self.sent[0][0] < horizon
            or len(self.sent) > MAX_RESEND
            or self.nbytes > MAX_RESEND_BYTES
        ):
            self.nbytes -= self.sent.popleft()[2]

    def resend(self, send: Callable[[list[Any]], None]) -> None:
        """Send each kept result again (the master counts a second copy as a duplicate)."""
        for _, frames, _ in self.sent:
            send(frames)


def too_large(size: int, limit: int) -> ErrorInfo:
    """A result the master would not read: failed here, for good (a retry makes it again)."""
    return ErrorInfo(
        kind="bad_input",
        type="ResultTooLarge",
        retryable=False,
        message=f"the shard's result is {size:,} bytes, above the master's max_message_bytes="
        f"{limit:,}; use more shards or write the output to files",
    )
