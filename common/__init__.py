"""shardmill: split a big dataset, run the pieces on many machines, get one correct answer back."""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from shardmill.errors import (
    ConfigError,
    Failed,
    HandshakeRefused,
    JobCancelled,
    JobFailed,
    JobSpecError,
    JobTimeout,
    MasterUnreachable,
    ProtocolError,
    RemoteError,
    ServerError,
    ShardmillError,
)
from shardmill.task import task

if TYPE_CHECKING:
    from shardmill.client import Client
    from shardmill.job import Job
    from shardmill.local import LocalCluster
    from shardmill.pipeline import Pipeline

# Imported on first use: a worker's task process, the master and a CLI query import the
# package without needing the client (and its settings, pydantic-settings) at all.
_LAZY = {
    "Client": "shardmill.client",
    "Job": "shardmill.job",
    "LocalCluster": "shardmill.local",
    "Pipeline": "shardmill.pipeline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardmill' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Client",
    "ConfigError",
    "Failed",
    "HandshakeRefused",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobSpecError",
    "JobTimeout",
    "LocalCluster",
    "MasterUnreachable",
    "Pipeline",
    "ProtocolError",
    "RemoteError",
    "ServerError",
    "ShardmillError",
    "__version__",
    "task",
]
