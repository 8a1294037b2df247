"""Following a job while it runs: a poll loop that rides out a restarting master, and a bar."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from shardmill.cli.tables import console, elapsed, rate
from shardmill.errors import MasterUnreachable
from shardmill.job import Job
from shardmill.wire.protocol import JobInfo

TERMINAL_STATES = ("done", "failed", "cancelled")


def poll_until_done(
    job: Job, timeout: float | None, on_update: Callable[[JobInfo], None]
) -> JobInfo:
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
        key = (
            info.state,
            info.shards_done,
            info.shards_failed,
            info.shards_running,
            info.attempts_failed,
            info.shards_retrying,
        )
        if key != last:
            on_update(info)
            last = key
        if info.state in TERMINAL_STATES or (deadline and time.monotonic() > deadline):
            return info
        time.sleep(0.2)  # a human-facing refresh rate, not a test wait


def events(before: JobInfo | None, now: JobInfo) -> list[str]:
    """Lines to print between two looks at a job: workers lost, attempts failed (retried)."""
    lines = []
    for worker in now.lost_workers:
        if before is None or worker not in before.lost_workers:
            lines.append(f"worker {worker} lost: its shards run again elsewhere")
    new = now.attempts_failed - (before.attempts_failed if before else 0)
    if new > 0 and now.last_failure:
        more = f" (and {new - 1} more)" if new > 1 else ""
        lines.append(f"failed attempt: {now.last_failure}{more}")
    return lines


def follow(job: Job, timeout: float | None) -> JobInfo:
    """A live progress bar (shards done/total, failed, retrying, rate, ETA), and a line for each
    worker lost and each failed attempt."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards"),
        TextColumn("{task.fields[problems]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[elapsed]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(job.id, total=None, rate="", elapsed="", problems="")
        seen: list[JobInfo] = []

        def update(info: JobInfo) -> None:
            for line in events(seen[-1] if seen else None, info):
                bar.console.print(line, markup=False, highlight=False)
            seen[:] = [info]
            problems = f"failed {info.shards_failed} retrying {info.shards_retrying}"
            bar.update(
                task,
                total=info.shards_total,
                completed=info.shards_done,
                rate=rate(info),
                elapsed=elapsed(info),
                problems=problems if info.attempts_failed or info.shards_failed else "",
                description=f"{job.id} {info.state}",
            )

        info = poll_until_done(job, timeout, update)
    if info.state == "failed" and info.error:
        console.print(info.error, markup=False, highlight=False)
    return info
