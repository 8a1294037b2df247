"""Health files: a role touches one while it serves, `shardmill health` judges its age.

One mechanism for every role, so one image HEALTHCHECK (`shardmill health`, no arguments)
fits the master and the workers alike: the image sets $SHARDMILL_HEALTH_FILE, the master
touches it on each heartbeat of its loop (its sockets are bound by then) and a worker
whenever it hears the master. Orchestrators (Swarm, Kubernetes, Compose) restart a role
whose file goes stale.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "SHARDMILL_HEALTH_FILE"
# Role-specific variables first (SHARDMILL_WORKER_HEALTH_FILE predates the shared one).
ENV_NAMES = ("SHARDMILL_WORKER_HEALTH_FILE", "SHARDMILL_MASTER_HEALTH_FILE", ENV)


class HealthFile:
    """Touches `path` at most once per `every` seconds (a heartbeat); no-op when path is None."""

    def __init__(self, path: Path | None, who: str) -> None:
        self.path = path
        self.who = who
        self._written = float("-inf")

    def touch(self, now: float, every: float) -> None:
        if self.path is None or now - self._written < every:
            return
        self._written = now
        self.path.write_text(f"{time.time():.3f} {self.who}\n")


def default_file() -> str | None:
    """The health file named by the environment, if any."""
    return next((os.environ[n] for n in ENV_NAMES if os.environ.get(n)), None)


def stale(path: Path, max_age: float) -> str | None:
    """Why the role behind `path` is unhealthy (no touch within max_age seconds), or None."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return f"{path} does not exist: the role has not started serving (or writes elsewhere)"
    if age > max_age:
        return f"{path} last touched {age:.1f} s ago (more than {max_age:g} s)"
    return None
