"""How the CLI shows things: tables of jobs, workers and shards, results, JSON output."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from shardmill.wire.protocol import JobInfo, ShardInfo, WorkerInfo

console = Console()


def out(args: argparse.Namespace, data: Any, human: Any) -> None:
    """`data` as JSON with --json, else call `human()` to print it for people."""
    if getattr(args, "json", False):
        print(json.dumps(data))
    else:
        human()


def to_jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def show_value(value: Any) -> None:
    # A table for per-column statistics (1-D arrays); anything else prints as it is.
    if isinstance(value, dict) and "mean" in value and np.ndim(value["mean"]) == 1:
        stats = [k for k in ("mean", "std", "min", "max", "sum") if k in value]
        table = Table("column", *stats)
        first = np.atleast_1d(value.get("mean", []))
        labels = list(value.get("columns", range(len(first))))
        for i in range(len(first)):
            row = (f"{np.atleast_1d(value[k])[i]:.6g}" for k in stats)
            table.add_row(str(labels[i]), *row)
        console.print(table)
        console.print(f"rows: {value.get('count')}, shards merged: {value.get('shards_merged')}")
        return
    console.print(to_jsonable(value))


def show_job(info: JobInfo) -> None:
    show_jobs([info])
    if info.error:
        console.print(info.error, markup=False, highlight=False)
    if info.shards:
        table = Table("shard", "state", "attempts", "worker", "merged")
        for s in info.shards:
            table.add_row(str(s.index), s.state, str(s.attempts), s.worker or "-", str(s.merged))
        console.print(table)


def show_jobs(jobs: list[JobInfo]) -> None:
    table = Table("job", "name", "op", "state", "done", "failed", "running", "total", "elapsed")
    for j in jobs:
        end = j.finished_at if j.finished_at is not None else None
        elapsed = f"{end - j.submitted_at:.2f} s" if end is not None else "-"
        table.add_row(
            j.job_id,
            j.name or "-",
            j.op,
            j.state,
            str(j.shards_done),
            str(j.shards_failed),
            str(j.shards_running),
            str(j.shards_total),
            elapsed,
        )
    console.print(table)


def show_workers(workers: list[WorkerInfo]) -> None:
    table = Table(
        "worker", "host", "pid", "slots", "busy", "heartbeat age", "done", "failed", "shm"
    )
    for w in workers:
        name = w.worker_id + (" (draining)" if w.draining else "")
        table.add_row(
            name,
            w.hostname,
            str(w.pid),
            str(w.slots),
            f"{w.busy}+{w.queued}" if w.queued else str(w.busy),
            f"{w.heartbeat_age:.2f} s",
            str(w.shards_done),
            str(w.shards_failed),
            "yes" if w.shared_memory else "no",
        )
    console.print(table)


def show_story(job_id: str, shard: ShardInfo) -> None:
    """`shardmill why`: every attempt of one shard, with its worker, outcome and error."""
    console.print(
        f"job {job_id} shard {shard.index}: [bold]{shard.state}[/], "
        f"{shard.attempts} attempt(s), lease {shard.worker or '-'}, "
        f"merged {shard.merged}x"
    )
    for a in shard.history:
        took = f"{a.ended - a.started:.3f} s" if a.ended is not None else "running"
        line = f"  attempt {a.attempt} on {a.worker}: {a.outcome} ({took})"
        if a.error is not None:
            sig = f", signal {a.error.signal}" if a.error.signal else ""
            code = f", exit code {a.error.exit_code}" if a.error.exit_code is not None else ""
            line += f" - {a.error.type} {a.error.message}{sig}{code}"
        console.print(line, markup=False, highlight=False)
        if a.error is not None and a.error.traceback:
            console.print(a.error.traceback, markup=False, highlight=False)
