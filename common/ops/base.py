"""The shape every dataset operation has, and the block of rows it maps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from shardmill.wire.spec import OpOptions

ALL_STRATEGIES = frozenset({"rows", "columns", "hash", "range"})
KEYED_STRATEGIES = frozenset({"rows", "hash", "range"})


@dataclass(frozen=True)
class Block:
    """Rows of one shard (a chunk at a time): the value columns and, when named, the key."""

    values: np.ndarray  # 2-D: rows x len(columns)
    columns: np.ndarray  # global indices of the value columns (int64)
    keys: np.ndarray | None = None  # 1-D key per row
    first_row: int = -1  # global index of row 0; -1 when unknown (CSV) or filtered (buckets)

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True)
class OpTraits:
    """What the planner must know about an op before it runs."""

    needs_key: bool = False  # value_counts, groupby
    values: Literal["all", "not_key", "none"] = "all"  # default value columns
    numeric: bool = True  # value columns must be bool, int, uint or float
    strategies: frozenset[str] = ALL_STRATEGIES
    ordered_output: bool = False  # one output row per input row, at its global index
    value_range: bool = False  # needs (lo, hi): given, or from a sample


class DatasetOp(Protocol):
    """`map` turns a block into a partial; `combine` is associative; `finalize` ends it."""

    @property
    def name(self) -> str: ...

    @property
    def traits(self) -> OpTraits: ...

    def map(self, block: Block, options: OpOptions) -> dict[str, Any]: ...

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]: ...

    def finalize(self, acc: dict[str, Any]) -> dict[str, Any]: ...


def is_empty(partial: dict[str, Any]) -> bool:
    """The accumulator before any shard: `{"count": 0}` (or nothing at all)."""
    return not partial or set(partial) == {"count"}


def as_matrix(block: Block) -> np.ndarray:
    """The value columns as float64, without a copy when they already are."""
    return np.asarray(block.values, dtype=np.float64)
