"""The master as a process: what it ignores, how it collects garbage, its exit code."""

from __future__ import annotations

import gc
import logging
import signal

from shardmill import exitcodes
from shardmill.config import MasterSettings
from shardmill.errors import StateDirError
from shardmill.master.loop import MasterLoop
from shardmill.ops.registry import Registry

log = logging.getLogger(__name__)


def serve(settings: MasterSettings, registry: Registry) -> int:
    """Run a master until stopped; returns the process exit code."""
    # A file size limit (ulimit -f) must fail a write with EFBIG, which the store reports,
    # rather than kill us with SIGXFSZ before we can say why.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if settings.peer is None:
        loop: MasterLoop | None = MasterLoop(settings, registry)
    else:  # with a standby: primary only once elected (docs/standby.md)
        from shardmill.master.standby.serve import primary_loop

        loop = primary_loop(settings, registry)
    if loop is None:
        return exitcodes.OK  # a standby stopped before it took over
    _tune_gc()  # after start-up: what it built is frozen
    try:
        loop.run()  # its last commit, at close, may fail too
    except StateDirError as e:
        # Crash-only, as PostgreSQL PANICs on a failed fsync: nothing uncommitted was answered,
        # the sockets are closed, and the next master resumes every job from the last commit.
        log.error("%s", e)
        return exitcodes.STATE
    return exitcodes.OK


def _tune_gc() -> None:
    """Keep Python's cyclic collector off the master's long-lived records. Finished jobs stay
    (until job_retention) with a Shard and its attempts per shard, and a busy master allocates
    fast: with the default young generation (700 allocations) the full collections that walk
    all of it cost ~8 of ~46 µs per task (W1 one per message, jobs not pruned). As Ray Serve's
    proxy does, collect the young generation every 10,000 allocations; what start-up built
    (modules, schemas, the loop) is frozen out of every scan. Reference counting frees the
    rest as before: this only delays reclaiming garbage cycles, which the master rarely makes."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


__all__ = ["serve"]
