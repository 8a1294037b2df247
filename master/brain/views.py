"""Read-outs of the brain for users: the `workers` listing (joined with what each said at
READY), the line a job's end is logged with."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shardmill.master.brain.model import Worker
from shardmill.wire.protocol import JobInfo, Ready, WorkerInfo


def worker_infos(
    workers: Iterable[Worker],
    hello: Mapping[str, Ready],
    now: float,
    *,
    shm_peers: set[str],
    shuffle: Mapping[str, int] | None = None,
    usage: Mapping[str, tuple[float, int]] | None = None,
) -> list[WorkerInfo]:
    infos = []
    for w in workers:
        ready = hello.get(w.worker_id)
        cpu, rss = (usage or {}).get(w.worker_id, (None, None))
        tasks = w.leases.held
        infos.append(
            WorkerInfo(
                worker_id=w.worker_id,
                hostname=ready.hostname if ready else "?",
                pid=ready.pid if ready else 0,
                slots=w.slots,
                busy=min(tasks, w.slots),
                queued=max(0, tasks - w.slots),
                rtt=None if w.rtt is None else round(w.rtt, 6),
                window=w.window,
                heartbeat_age=round(now - w.last_seen, 3),
                shards_done=w.done,
                shards_failed=w.failed,
                version=ready.version if ready else "?",
                modules=list(ready.modules) if ready else [],
                draining=w.draining,
                shared_memory=w.worker_id in shm_peers,
                shuffle_bytes=(shuffle or {}).get(w.worker_id, 0),
                cpu=cpu,
                rss=rss,
            )
        )
    return infos


def ending_line(info: JobInfo) -> str:
    """A job's end as the master logs it: how long, how many shards, what went wrong on the way."""
    took = (info.finished_at or info.submitted_at) - info.submitted_at
    line = (
        f"job {info.job_id} {info.state} in {took:.2f} s: {info.shards_done}/{info.shards_total} "
        f"shards done, {info.shards_failed} failed, {info.attempts_failed} failed attempt(s)"
    )
    if info.lost_workers:
        line += f", lost worker(s) {', '.join(info.lost_workers)}"
    return line
