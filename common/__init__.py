"""shardmill: split a big dataset, run the pieces on many machines, get one correct answer back."""

from __future__ import annotations

__version__ = "0.1.0"

from shardmill.client import Client
from shardmill.errors import (
    ConfigError,
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
from shardmill.job import Job
from shardmill.local import LocalCluster
from shardmill.task import task

__all__ = [
    "Client",
    "ConfigError",
    "HandshakeRefused",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobSpecError",
    "JobTimeout",
    "LocalCluster",
    "MasterUnreachable",
    "ProtocolError",
    "RemoteError",
    "ServerError",
    "ShardmillError",
    "__version__",
    "task",
]
