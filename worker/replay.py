"""Run a failed attempt again in this process, as a worker's child ran it, from its replay
bundle in the state dir: with the master running or long stopped. What changed since (the
module's file, the shard's bytes) is said before it runs; `pdb` stops at the exception, at
the line that raised it. `Client.replay` and `shardmill replay` come here."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shardmill.debug.bundle import Bundle, load
from shardmill.debug.provenance import changes, code_module
from shardmill.errors import ReplayError
from shardmill.wire.protocol import Task


def run(bundle: Bundle, *, pdb: bool = False, say: Callable[[str], None] = print) -> Any:
    """Run the attempt again here: its value, or the exception it raises (after a post-mortem
    debugger session at the raising line, with `pdb`)."""
    from shardmill.ops.registry import Registry  # the task's imports: only when it runs
    from shardmill.worker.executor import execute

    if bundle.dropped:
        raise ReplayError(
            f"the replay bundle of job {bundle.job_id} shard {bundle.shard} attempt "
            f"{bundle.attempt} kept no arguments: they were {bundle.dropped:,} bytes, above the "
            "master's replay_bundle_bytes; raise it to replay shards this big"
        )
    task = Task.model_validate(bundle.task)
    for note in changes(bundle.error, task):
        say(note)
    module = code_module(task)
    registry = Registry([] if module == "shardmill" else [module])
    if module != "shardmill" and module not in registry.modules:
        why = (registry.broken.get(module) or "not on sys.path").strip().splitlines()[-1]
        raise ReplayError(
            f"module {module} cannot be imported here ({why}); put it on PYTHONPATH as "
            f"the worker had it (at {bundle.error.code_file or 'an unknown path'})"
        )
    try:
        return execute(task, list(bundle.arrays), registry)
    except BaseException:
        if pdb:
            import pdb as debugger  # only here: its imports would cost every client's start

            debugger.post_mortem(sys.exc_info()[2])
        raise


def replay(
    job_id: str,
    shard: int,
    *,
    attempt: int | None = None,
    state_dir: str | Path | None = None,
    pdb: bool = False,
) -> Any:
    """Run a failed attempt of `job_id`'s `shard` again in this process, from its replay
    bundle in the master's state dir: its value, or the exception it raises."""
    return run(load(job_id, shard, attempt=attempt, state_dir=state_dir), pdb=pdb)
