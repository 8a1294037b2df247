"""Following a job while it runs: a poll loop that rides out a restarting master, and a bar."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from shardmill.cli.tables import console, elapsed, rate, say
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
    """Follow `job` until it ends: a live bar on a terminal, else plain whole lines (a log or
    a pipe gets no cursor tricks, no cut last line and no wrapped errors). Then its error."""
    info = _follow_bar(job, timeout) if console.is_terminal else _follow_lines(job, timeout)
    if info.state == "failed" and info.error:
        say(info.error)
    return info


def progress_line(job_id: str, info: JobInfo) -> str:
    """One whole line: state, shards done/total, problems, rate, time; an ETA while it runs."""
    parts = [f"{job_id} {info.state}", f"{info.shards_done}/{info.shards_total} shards"]
    if problems := _problems(info):
        parts.append(problems)
    parts += [rate(info), elapsed(info)]
    if eta := eta_text(info):
        parts.append(eta)
    return "  ".join(parts)


def eta_text(info: JobInfo, now: float | None = None) -> str:
    """ "ETA N s" from the job's own rate while it runs; nothing once it ended (or before a
    shard is done, when there is no rate to go by)."""
    if info.state in TERMINAL_STATES or info.started_at is None or not info.shards_done:
        return ""
    spent = (now or time.time()) - info.started_at
    left = info.shards_total - info.shards_done - info.shards_failed
    return f"ETA {max(left, 0) * spent / info.shards_done:.0f} s"


def _problems(info: JobInfo) -> str:
    if not (info.attempts_failed or info.shards_failed):
        return ""
    return f"failed {info.shards_failed} retrying {info.shards_retrying}"


PLAIN_EVERY = 2.0  # seconds between progress lines without a terminal (each state change too)


def _follow_lines(job: Job, timeout: float | None) -> JobInfo:
    seen: list[JobInfo] = []
    printed = [0.0]

    def update(info: JobInfo) -> None:
        for line in events(seen[-1] if seen else None, info):
            say(line)
        moved = not seen or seen[-1].state != info.state
        seen[:] = [info]
        now = time.monotonic()
        if info.state not in TERMINAL_STATES and (moved or now - printed[0] >= PLAIN_EVERY):
            say(progress_line(job.id, info))
            printed[0] = now

    info = poll_until_done(job, timeout, update)
    say(progress_line(job.id, info))  # the last word, whatever the last update printed
    return info


def _follow_bar(job: Job, timeout: float | None) -> JobInfo:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards"),
        TextColumn("{task.fields[problems]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[elapsed]}"),
        TextColumn("{task.fields[eta]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(job.id, total=None, rate="", elapsed="", problems="", eta="")
        seen: list[JobInfo] = []

        def update(info: JobInfo) -> None:
            for line in events(seen[-1] if seen else None, info):
                bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
            seen[:] = [info]
            bar.update(
                task,
                total=info.shards_total,
                completed=info.shards_done,
                rate=rate(info),
                elapsed=elapsed(info),
                problems=_problems(info),
                eta=eta_text(info),
                description=f"{job.id} {info.state}",
            )

        return poll_until_done(job, timeout, update)
