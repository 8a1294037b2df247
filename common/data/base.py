"""The data layer's shared shapes: a dataset as planning sees it, one part of it, and a chunk
of rows as a worker reads it. Each format (datasets.py, csvfile.py, parquet.py) builds on these.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardmill.wire.spec import Source


@dataclass(frozen=True)
class Part:
    """One contiguous piece of a dataset, as a shard will read it."""

    source: Source
    first_row: int  # global index of its first row; -1 when unknown (CSV)
    rows: int  # exact, or estimated when the dataset's row count is
    nbytes: int
    values: np.ndarray | None = None  # the rows themselves, for data sent by value


class Dataset(ABC):
    """What planning needs: column names and dtypes, rows, how to cut it, a sample."""

    format: str
    label: str
    names: list[str]
    dtypes: list[np.dtype[Any]]
    rows: int
    exact: bool = True  # False: `rows` is an estimate (CSV)

    @property
    def row_bytes(self) -> float:
        return float(sum(d.itemsize for d in self.dtypes)) or 1.0

    @abstractmethod
    def split(
        self, *, shards: int | None, rows_per_shard: int | None, target_bytes: int | None
    ) -> list[Part]: ...

    @abstractmethod
    def whole(self) -> Part: ...

    @abstractmethod
    def sample(self, columns: list[int], n: int) -> tuple[np.ndarray | None, list[np.ndarray]]:
        """About `n` rows of `columns`, and their global row indices when those are known."""


@dataclass(frozen=True)
class Chunk:
    """Rows as one 2-D array (npy, synthetic, value) or as 1-D columns (CSV, Parquet)."""

    first_row: int
    matrix: np.ndarray | None = None
    columns: list[np.ndarray] | None = None

    @property
    def width(self) -> int:
        if self.matrix is not None:
            return int(self.matrix.shape[1])
        return len(self.columns or [])

    def column(self, i: int) -> np.ndarray:
        if self.matrix is not None:
            return self.matrix[:, i]
        assert self.columns is not None
        return self.columns[i]

    def values(self, cols: list[int]) -> np.ndarray:
        if self.matrix is not None:
            if cols == list(range(self.matrix.shape[1])):
                return self.matrix  # no copy when the op reads every column
            return self.matrix[:, cols]
        assert self.columns is not None
        n = len(self.columns[0]) if self.columns else 0
        picked = [self.columns[i] for i in cols]
        return np.column_stack(picked) if picked else np.zeros((n, 0))
