"""A seeded synthetic dataset: demos and benchmarks need no files.

Rows come in fixed blocks of BLOCK_ROWS; block b is drawn from a generator seeded with
(seed, b). Any shard can build any row range on its own, and the dataset is the same whatever
the sharding, so results can be checked against `materialize`.
"""

from __future__ import annotations

import numpy as np

from shardmill.wire.spec import SyntheticSpec

BLOCK_ROWS = 65_536


def block(spec: SyntheticSpec, index: int) -> np.ndarray:
    """Block `index` (float64, rows x cols); column 0 holds integer keys when spec.keys is set."""
    start = index * BLOCK_ROWS
    n = max(0, min(BLOCK_ROWS, spec.rows - start))
    rng = np.random.default_rng([spec.seed, index])
    out = rng.normal(
        loc=np.arange(spec.cols), scale=1.0 + np.arange(spec.cols), size=(n, spec.cols)
    )
    if spec.keys is not None:
        out[:, 0] = rng.integers(0, spec.keys, size=n)
    return out


def rows(spec: SyntheticSpec, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the dataset, built from the blocks that overlap them."""
    stop = min(stop, spec.rows)
    if stop <= start:
        return np.zeros((0, spec.cols))
    first, last = start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS
    parts = [block(spec, b) for b in range(first, last + 1)]
    joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
    offset = first * BLOCK_ROWS
    return joined[start - offset : stop - offset]


def materialize(spec: SyntheticSpec) -> np.ndarray:
    """The whole dataset in memory: the single-process reference for tests."""
    return rows(spec, 0, spec.rows)


def sample(spec: SyntheticSpec, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `n` rows from evenly spaced blocks, and their global row indices."""
    if spec.rows == 0:
        return np.zeros(0, np.int64), np.zeros((0, spec.cols))
    blocks = -(-spec.rows // BLOCK_ROWS)
    take = min(blocks, max(8, -(-n // BLOCK_ROWS)))  # at least 8 blocks: spread over the rows
    chosen = np.unique(np.linspace(0, blocks - 1, take).round().astype(np.int64))
    index = np.concatenate(
        [np.arange(b * BLOCK_ROWS, min(spec.rows, (b + 1) * BLOCK_ROWS)) for b in chosen]
    )
    values = np.concatenate([block(spec, int(b)) for b in chosen])
    if index.size > n:
        pick = np.linspace(0, index.size - 1, n).round().astype(np.int64)
        index, values = index[pick], values[pick]
    return index, values
