"""Datasets are read only from inside configured data roots (no traversal, no symlinks out)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from shardmill.errors import JobSpecError


def check_data_path(path: str, roots: Sequence[Path]) -> str:
    """The real path of `path` if it lies inside one of `roots`; JobSpecError otherwise."""
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return real
    where = ", ".join(str(r) for r in roots) or "(none)"
    raise JobSpecError(
        f"dataset: {path} resolves to {real}, outside the master's data roots ({where}); put "
        "the data under one of them, or start the master with --data-root DIR"
    )
