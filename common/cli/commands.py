"""What each `shardmill` subcommand does; parsing lives in `cli.py`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from shardmill import exitcodes
from shardmill.cli_spec import spec_fields
from shardmill.client import Client, Job
from shardmill.config import MasterSettings, WorkerSettings
from shardmill.errors import MasterUnreachable
from shardmill.protocol import JobInfo

console = Console()
TERMINAL_STATES = ("done", "failed", "cancelled")


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """Only flags the user gave, so environment variables still fill in the rest."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def cmd_master(args: argparse.Namespace) -> int:
    from shardmill.cli import setup_logging
    from shardmill.master.loop import serve

    settings = MasterSettings(
        **_given(
            args,
            "keys",
            "insecure",
            "data_roots",
            "max_message_bytes",
            "max_shards",
            "max_queued_jobs",
            "max_result_bytes",
            "host",
            "port",
            "client_port",
            "heartbeat_interval",
            "heartbeat_liveness",
            "prefetch_below",
            "state_dir",
            "log_level",
            "imports",
        )
    )
    setup_logging("master", settings.log_level)
    if settings.imports and not _load_op_modules(settings.imports):
        return exitcodes.CONFIG
    return serve(settings)


def _load_op_modules(names: list[str]) -> bool:
    """Import the modules user ops come from (the master combines and finalizes with them)."""
    from shardmill.ops import load_modules

    broken = load_modules(names)
    for name, tb in broken.items():
        print(f"shardmill master: cannot import module {name}:\n{tb}", file=sys.stderr)
    return not broken


def cmd_worker(args: argparse.Namespace) -> int:
    from shardmill.cli import setup_logging
    from shardmill.worker.agent import serve
    from shardmill.worker.registry import missing_modules

    settings = WorkerSettings(
        **_given(
            args,
            "keys",
            "insecure",
            "master",
            "slots",
            "prefetch",
            "imports",
            "heartbeat_interval",
            "drain_grace",
            "health_file",
            "log_level",
        )
    )
    setup_logging("worker", settings.log_level)
    missing = missing_modules(settings.imports)
    if missing:
        print(
            f"shardmill worker: cannot find module(s) {', '.join(missing)} on the Python path; "
            "install them or set PYTHONPATH, then start the worker again",
            file=sys.stderr,
        )
        return exitcodes.CONFIG
    return serve(settings)


def _connect(args: argparse.Namespace) -> Client:
    return Client(
        args.master, connect_timeout=args.connect_timeout, keys=args.keys, insecure=args.insecure
    )


def cmd_submit(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        job = client.submit(
            args.op,
            args.dataset,
            shards=args.shards,
            max_attempts=args.max_attempts,
            task_timeout=args.task_timeout,
            allow_failures=args.allow_failures,
            name=args.name,
            **spec_fields(args),
        )
        if not args.wait:
            _out(args, {"job_id": job.id}, lambda: print(job.id))
            return exitcodes.OK
        if not args.json:
            console.print(f"job [bold]{job.id}[/] submitted")
            _follow(job, args.timeout)
        return _print_result(args, job)


def cmd_result(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        return _print_result(args, client.job(args.job))


def _print_result(args: argparse.Namespace, job: Job) -> int:
    value = job.result(timeout=args.timeout)
    _out(args, {"job_id": job.id, "result": to_jsonable(value)}, lambda: _show_value(value))
    return exitcodes.OK


def cmd_status(args: argparse.Namespace) -> int:
    if args.job is None:
        return cmd_jobs(args)
    with _connect(args) as client:
        info = client.status(args.job, shards=args.shards)
    _out(args, info.model_dump(mode="json"), lambda: _show_job(info))
    return exitcodes.OK


def cmd_jobs(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        if getattr(args, "prune", False):
            pruned = client.prune(args.older_than)
            _out(
                args,
                [j.model_dump(mode="json") for j in pruned],
                lambda: print(f"pruned {len(pruned)} finished job(s)"),
            )
            return exitcodes.OK
        jobs = client.jobs()
    _out(args, [j.model_dump(mode="json") for j in jobs], lambda: _show_jobs(jobs))
    return exitcodes.OK


def cmd_workers(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        workers = client.workers()

    def show() -> None:
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

    _out(args, [w.model_dump(mode="json") for w in workers], show)
    return exitcodes.OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        info = client.cancel(args.job)
    _out(args, info.model_dump(mode="json"), lambda: print(f"job {info.job_id}: {info.state}"))
    return exitcodes.OK


def cmd_watch(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        job = client.job(args.job)
        if args.json:
            info = _poll_until_done(
                job,
                args.timeout,
                on_update=lambda i: print(json.dumps(i.model_dump(mode="json")), flush=True),
            )
        else:
            info = _follow(job, args.timeout)
    return {"done": exitcodes.OK, "cancelled": exitcodes.CANCELLED}.get(
        info.state, exitcodes.JOB_FAILED if info.state == "failed" else exitcodes.TIMEOUT
    )


def cmd_why(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        info = client.status(args.job, shards=True)
    shards = info.shards or []
    if not 0 <= args.shard < len(shards):
        print(f"shardmill: job {args.job} has shards 0..{len(shards) - 1}", file=sys.stderr)
        return exitcodes.NOT_FOUND
    shard = shards[args.shard]

    def show() -> None:
        console.print(
            f"job {info.job_id} shard {shard.index}: [bold]{shard.state}[/], "
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

    _out(args, shard.model_dump(mode="json"), show)
    return exitcodes.OK


def cmd_health(args: argparse.Namespace) -> int:
    if args.file:
        path = Path(args.file)
        age = time.time() - path.stat().st_mtime if path.exists() else float("inf")
        if age > args.max_age:
            print(f"unhealthy: {path} last touched {age:.1f} s ago", file=sys.stderr)
            return exitcodes.UNHEALTHY
        return exitcodes.OK
    try:
        Client(args.master, connect_timeout=3.0, keys=args.keys, insecure=args.insecure).ping()
    except MasterUnreachable as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return exitcodes.UNHEALTHY
    return exitcodes.OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from shardmill.security import keygen

    directory = Path(args.dir)
    written = keygen(directory, force=args.force)
    print(f"keys in {directory}: " + (", ".join(p.name for p in written) or "all present"))
    print(f"master: --keys {directory} (it trusts the public keys in {directory}/authorized)")
    print("workers and clients: --keys DIR with their *.key_secret and master.key")
    return exitcodes.OK


def cmd_demo(args: argparse.Namespace) -> int:
    from shardmill.demo import run_demo

    return run_demo(
        rows=args.rows,
        cols=args.cols,
        shards=args.shards or 4 * args.workers,
        workers=args.workers,
        directory=args.dir,
        as_json=args.json,
    )


# ---- following a job ---------------------------------------------------------------------------


def _poll_until_done(job: Job, timeout: float | None, on_update: Any) -> JobInfo:
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    lost_since: float | None = None
    while True:
        try:
            info = job.progress()
            lost_since = None
        except MasterUnreachable:  # a restarting master: keep watching for a while
            now = time.monotonic()
            lost_since = lost_since or now
            if now - lost_since > job.client.reconnect_timeout:
                raise
            continue
        key = (info.state, info.shards_done, info.shards_failed, info.shards_running)
        if key != last:
            on_update(info)
            last = key
        if info.state in TERMINAL_STATES or (deadline and time.monotonic() > deadline):
            return info
        time.sleep(0.2)  # a human-facing refresh rate, not a test wait


def _follow(job: Job, timeout: float | None) -> JobInfo:
    """A live progress bar: shards done/total, rate and ETA."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    start = time.monotonic()
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(job.id, total=None, rate="")

        def update(info: JobInfo) -> None:
            rate = info.shards_done / max(1e-9, time.monotonic() - start)
            bar.update(
                task,
                total=info.shards_total,
                completed=info.shards_done,
                rate=f"{rate:.1f} shards/s",
                description=f"{job.id} {info.state}",
            )

        info = _poll_until_done(job, timeout, update)
    if info.state == "failed" and info.error:
        console.print(info.error, markup=False, highlight=False)
    return info


# ---- output ------------------------------------------------------------------------------------


def _out(args: argparse.Namespace, data: Any, human: Any) -> None:
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


def _show_value(value: Any) -> None:
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


def _show_job(info: JobInfo) -> None:
    _show_jobs([info])
    if info.error:
        console.print(info.error, markup=False, highlight=False)
    if info.shards:
        table = Table("shard", "state", "attempts", "worker", "merged")
        for s in info.shards:
            table.add_row(str(s.index), s.state, str(s.attempts), s.worker or "-", str(s.merged))
        console.print(table)


def _show_jobs(jobs: list[JobInfo]) -> None:
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
