"""Read-outs of the brain for users: the `workers` listing, joined with what each said at READY."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shardmill.master.brain.model import Worker
from shardmill.wire.protocol import Ready, WorkerInfo


def worker_infos(
    workers: Iterable[Worker], hello: Mapping[str, Ready], now: float, *, shm_peers: set[str]
) -> list[WorkerInfo]:
    infos = []
    for w in workers:
        ready = hello.get(w.worker_id)
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
            )
        )
    return infos
