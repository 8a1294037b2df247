"""The shuffle benchmark's one step, imported by shardmill's workers (`--import shuffle_tasks`)."""

from __future__ import annotations

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
