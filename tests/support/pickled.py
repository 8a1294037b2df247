"""Clusters for the pickle opt-in: CURVE keys where the default client's key is also in
KEYS/pickle/ and a named client "plain" is not; workers with or without --allow-pickle."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import FAST, cluster_env

from shardmill import LocalCluster
from shardmill.wire.security import add_identity, keygen


def pickle_keys(directory: Path) -> Path:
    keygen(directory)
    (directory / "pickle").mkdir()
    shutil.copy(directory / "clients" / "client.key", directory / "pickle" / "client.key")
    add_identity(directory, "client", "plain")
    return directory


def pickle_cluster(keys: Path, *, allow: bool = True, workers: int = 2) -> LocalCluster:
    return LocalCluster(
        workers=workers,
        imports=["sm_tasks"],
        env=cluster_env(),
        keys=keys,
        worker_args=["--allow-pickle"] if allow else [],
        **FAST,
    )
