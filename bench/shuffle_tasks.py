"""The shuffle benchmark's one step, imported by shardmill's workers (`--import shuffle_tasks`)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

Table = dict[str, np.ndarray]


def named(t: Table) -> Table:
    """The .npy's two columns as user and amount."""
    return {"user": t["0"], "amount": t["1"]}


def load_frame(part: tuple[str, int, int]) -> Any:
    """Dask's reader: rows [a, b) of the .npy as a pandas DataFrame (each worker reads its
    own part, as shardmill's do; no data travels in the task graph)."""
    import pandas as pd

    path, a, b = part
    rows = np.load(path, mmap_mode="r")[a:b]
    return pd.DataFrame({"user": np.array(rows[:, 0]), "amount": np.array(rows[:, 1])})


MAP_SECONDS_PER_ROW = 0.2e-6  # bench_backpressure: the map stage's pace ...
SLOW_SECONDS_PER_ROW = 2e-6  # ... and the stage after it, ten times slower


def paced(t: Table) -> Table:
    """The fast map: the .npy's columns named, at MAP_SECONDS_PER_ROW."""
    time.sleep(len(t["0"]) * MAP_SECONDS_PER_ROW)
    return named(t)


def slow(t: Table) -> Table:
    """The slow stage's step, ten times the map's time a row: a batch's rows and the sum of
    twice their amounts (one row a batch: the client gets little back)."""
    time.sleep(len(t["user"]) * SLOW_SECONDS_PER_ROW)
    return {"n": np.array([len(t["user"])]), "s": np.array([int(t["amount"].sum()) * 2])}


def paced_frame(df: Any) -> Any:
    """`paced` for Dask's partitions (pandas)."""
    time.sleep(len(df) * MAP_SECONDS_PER_ROW)
    return df


def slow_frame(df: Any) -> Any:
    """`slow` for Dask's partitions (pandas)."""
    import pandas as pd

    time.sleep(len(df) * SLOW_SECONDS_PER_ROW)
    return pd.DataFrame({"n": [len(df)], "s": [int(df["amount"].sum()) * 2]})
