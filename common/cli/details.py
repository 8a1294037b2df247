"""`shardmill status JOB` for people: what the jobs table has no room for, one fact a line."""

from __future__ import annotations

import time

from shardmill.wire.protocol import JobInfo


def job_details(info: JobInfo, now: float | None = None) -> list[str]:
    """Owner, timing (submitted, started, finished, how long it ran), failed attempts, lost
    workers, and (when there are any) missing shards, duplicates and master restarts."""
    facts = [("owner", info.owner or "- (no CURVE keys: clients are not named)")]
    facts += _timing(info, time.time() if now is None else now)
    failed = str(info.attempts_failed)
    if info.attempts_failed and info.last_failure:
        failed += f", the last: {info.last_failure}"
    if info.shards_retrying:
        failed += f" ({info.shards_retrying} shard(s) waiting to retry)"
    facts.append(("failed attempts", failed))
    lost = ", ".join(info.lost_workers) + " (their shards ran again elsewhere)"
    facts.append(("lost workers", lost if info.lost_workers else "none"))
    if info.missing_shards and info.state == "done":  # allow_failures; a failed job says why
        facts.append(("missing shards", ", ".join(map(str, info.missing_shards))))
    if info.duplicates:
        facts.append(("duplicates", f"{info.duplicates} second result(s) dropped"))
    if info.restarts:
        facts.append(("master restarts", ", ".join(stamp(t) for t in info.restarts)))
    width = max(len(label) for label, _ in facts)
    return [f"{label:<{width}}  {value}" for label, value in facts]


def _timing(info: JobInfo, now: float) -> list[tuple[str, str]]:
    """When it was submitted, started and finished, each with its time since the submit."""
    submitted = info.submitted_at
    rows = [("submitted", stamp(submitted))]
    if info.started_at is not None:
        rows.append(("started", f"{stamp(info.started_at)} (+{info.started_at - submitted:.2f} s)"))
    if info.finished_at is not None:
        ran = "" if info.started_at is None else f", ran {info.finished_at - info.started_at:.2f} s"
        took = f"(+{info.finished_at - submitted:.2f} s{ran})"
        rows.append((info.state, f"{stamp(info.finished_at)} {took}"))
    elif info.started_at is not None:
        rows.append(("running for", f"{now - info.started_at:.2f} s"))
    else:
        rows.append(("waiting for", f"{now - submitted:.2f} s, not started yet"))
    return rows


def stamp(wall: float) -> str:
    """A wall-clock time, local, to the millisecond."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall)) + f".{int(wall % 1 * 1000):03d}"
