"""Reducing values per key: sort once, then one ufunc.reduceat per field."""

from __future__ import annotations

import numpy as np


def group_starts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys, the order that sorts rows by key, where each key's run starts)."""
    if keys.size == 0:
        return keys, np.zeros(0, np.int64), np.zeros(0, np.int64)
    uniq, inverse = np.unique(keys, return_inverse=True)
    order = np.argsort(inverse.reshape(-1), kind="stable")
    counts = np.bincount(inverse.reshape(-1), minlength=uniq.size)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return uniq, order, starts


def reduce_sorted(
    values: np.ndarray, order: np.ndarray, starts: np.ndarray, ufunc: np.ufunc
) -> np.ndarray:
    """`ufunc` over each key's rows of `values` (first axis), in unique-key order."""
    if starts.size == 0:
        return np.zeros((0, *values.shape[1:]), dtype=values.dtype)
    return ufunc.reduceat(values[order], starts, axis=0)
