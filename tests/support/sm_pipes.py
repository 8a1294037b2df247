"""Functions the pipeline tests' workers import: tables in, tables out."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

Table = dict[str, np.ndarray]


def events(t: Table) -> Table:
    """The .npy's columns named: user, amount."""
    return {"user": t["0"].astype(np.int64), "amount": t["1"].astype(np.int64)}


def big(t: Table) -> np.ndarray:
    return t["amount"] >= 50


def slow_count(t: Table) -> Table:
    """A user's reduce over one partition, slow enough to be caught mid-stage."""
    time.sleep(0.25)
    if not t:
        return {"user": np.zeros(0, dtype=np.int64), "n": np.zeros(0, dtype=np.int64)}
    users, counts = np.unique(t["user"], return_counts=True)
    return {"user": users, "n": counts.astype(np.int64)}


def ragged(t: Table) -> Table:
    return {"a": np.arange(3), "b": np.arange(4)}


def float_key(t: Table) -> Table:
    return {"user": t["user"].astype(np.float64) + 0.5, "amount": t["amount"]}


def not_a_table(t: Table) -> Any:
    return [1, 2, 3]


def noisy(t: Table) -> Table:
    """Not deterministic: a fresh random column on every run (unseeded on purpose)."""
    return {**t, "noise": np.random.default_rng().integers(0, 1000, len(t["user"]))}


def noise_sums(t: Table) -> Table:
    """Per user: rows and the sum of the noise (a reduce that shows which bytes it read)."""
    time.sleep(0.25)
    if not t:
        return {
            "user": np.zeros(0, np.int64),
            "n": np.zeros(0, np.int64),
            "s": np.zeros(0, np.int64),
        }
    users, inv = np.unique(t["user"], return_inverse=True)
    return {
        "user": users,
        "n": np.bincount(inv).astype(np.int64),
        "s": np.bincount(inv, weights=t["noise"]).astype(np.int64),
    }


def paced(t: Table) -> Table:
    """A fast map: the events' columns named, 0.4 µs a row."""
    time.sleep(len(t["0"]) * 0.4e-6)
    return events(t)


def slow_rows(t: Table) -> Table:
    """Ten times slower than `paced`, row for row: 4 µs a row."""
    time.sleep(len(t["user"]) * 4e-6)
    return {**t, "twice": t["amount"] * 2}
