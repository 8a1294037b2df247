"""Turn a job spec into shard descriptors: references to data, never the data itself."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardmill.errors import JobSpecError
from shardmill.protocol import RowRange


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran_order: bool


def read_npy_header(path: str) -> NpyHeader:
    """Read only the header of a .npy file; raise JobSpecError naming the file and the fix."""
    if not os.path.isabs(path):
        raise JobSpecError(f"dataset: {path!r} is not an absolute path; send absolute paths")
    if not os.path.exists(path):
        raise JobSpecError(
            f"dataset: {path} does not exist on the master; put it on storage every worker "
            "and the master see at the same path"
        )
    if not os.path.isfile(path):
        raise JobSpecError(f"dataset: {path} is not a file; give the path of a .npy file")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (OSError, ValueError, EOFError) as e:
        raise JobSpecError(f"dataset: {path} is not a readable .npy file: {e}") from e
    return NpyHeader(tuple(int(n) for n in shape), np.dtype(dtype), bool(fortran))


def plan_rows(path: str, shards: int, rows: int) -> list[RowRange]:
    """Split `rows` rows into `shards` contiguous near-equal row ranges (fewer if rows < shards)."""
    n = max(1, min(shards, rows))
    bounds = np.linspace(0, rows, n + 1).round().astype(np.int64)
    return [RowRange(path=path, start=int(bounds[i]), stop=int(bounds[i + 1])) for i in range(n)]
