"""Tasks for bench_checkpoint.py."""

from __future__ import annotations

import time


def sleepy(seconds: float) -> float:
    """A shard that takes `seconds`."""
    time.sleep(seconds)
    return seconds
