"""Merging per-column partials: same columns combine, different columns (vertical shards) join.

A per-column partial has `cols` (global column indices, sorted) and fields whose first axis
runs over those columns. Column-group shards hold disjoint `cols`; row shards hold the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shardmill.ops.base import is_empty

Partial = dict[str, Any]


def merge_columns(
    a: Partial, b: Partial, fields: Sequence[str], combine: Callable[[Partial, Partial], Partial]
) -> Partial:
    """`combine` where both hold a column; the other columns are taken as they are."""
    if is_empty(b):
        return a
    if is_empty(a):
        return b
    ca, cb = np.asarray(a["cols"]), np.asarray(b["cols"])
    if np.array_equal(ca, cb):
        return {**a, **combine(a, b), "cols": ca}
    both, ia, ib = np.intersect1d(ca, cb, assume_unique=True, return_indices=True)
    only_a = np.setdiff1d(np.arange(ca.size), ia)
    only_b = np.setdiff1d(np.arange(cb.size), ib)
    pieces = [_take(a, only_a, fields), _take(b, only_b, fields)]
    if both.size:
        pieces.append({**combine(_take(a, ia, fields), _take(b, ib, fields)), "cols": both})
    cols = np.concatenate([np.asarray(p["cols"]) for p in pieces])
    order = np.argsort(cols, kind="stable")
    out: Partial = {**a, "cols": cols[order]}
    for f in fields:
        out[f] = np.concatenate([np.asarray(p[f]) for p in pieces])[order]
    return out


def _take(p: Partial, index: np.ndarray, fields: Sequence[str]) -> Partial:
    out: Partial = {**p, "cols": np.asarray(p["cols"])[index]}
    for f in fields:
        out[f] = np.asarray(p[f])[index]
    return out
