"""Datasets are read only from inside configured data roots (no traversal, no symlinks out)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from shardmill.errors import JobSpecError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# Remote stores only: a file://, a chained fsspec URL (`simplecache::file://...`) or any other
# scheme could read the master's or a worker's own disk around the data roots.
URL_SCHEMES = frozenset({"http", "https", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def is_url(path: str) -> bool:
    """Whether `path` is given as a URL (any scheme: `check_url` says which are allowed)."""
    return _SCHEME.match(path) is not None or "::" in path


def check_url(url: str) -> None:
    """Refuse, by name, a URL whose scheme is not a remote store's."""
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    if scheme not in URL_SCHEMES or "::" in url:
        raise JobSpecError(
            f"dataset: {url}: only {', '.join(sorted(URL_SCHEMES))} URLs are read (no chained "
            "URLs); give a local file as a plain path under the master's data roots"
        )


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
