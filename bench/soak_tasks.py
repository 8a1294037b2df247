"""Tasks for soak.py: short, deterministic, some raise on purpose."""

from __future__ import annotations

import time


def square(x: int, nap: float = 0.0) -> int:
    """x squared, after `nap` seconds (so a fault finds shards running)."""
    if nap:
        time.sleep(nap)
    return x * x


def picky(x: int, nap: float = 0.0) -> int:
    """2x, except a multiple of 7 raises ValueError on every attempt."""
    if nap:
        time.sleep(nap)
    if x % 7 == 0:
        raise ValueError(f"soak: {x} is a multiple of 7")
    return 2 * x
