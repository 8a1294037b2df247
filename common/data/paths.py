"""Datasets are read only from inside configured data roots (no traversal, no symlinks out)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from shardmill.errors import JobSpecError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
LOCAL_SCHEMES = frozenset({"file", "local", "memory"})  # paths in disguise: the data roots apply


def is_url(path: str) -> bool:
    """Whether `path` names a remote file (http(s)://, s3://, ...) rather than a local path."""
    match = _SCHEME.match(path)
    return match is not None and match.group(1).lower() not in LOCAL_SCHEMES


def located(path: str) -> str:
    """A dataset as the master should see it: a URL as given, a local path made absolute."""
    return path if is_url(path) else os.path.abspath(path)


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


def check_path(path: str, *, directory: bool, hint: str = "give the path of a data file") -> None:
    """Refuse, by name, a dataset path that is relative, missing, the wrong kind or unreadable."""
    if not os.path.isabs(path):
        raise JobSpecError(f"dataset: {path!r} is not an absolute path; send absolute paths")
    if not os.path.exists(path):
        raise JobSpecError(
            f"dataset: {path} does not exist on the master; put it on storage every worker "
            "and the master see at the same path"
        )
    if directory and not os.path.isdir(path):
        raise JobSpecError(f"dataset: {path} is not a directory (format npy_dir)")
    if not directory and not os.path.isfile(path):
        raise JobSpecError(f"dataset: {path} is not a file; {hint}")
    if not os.access(path, os.R_OK):
        raise JobSpecError(f"dataset: {path} is not readable; check its permissions")
