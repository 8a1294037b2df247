"""Messages under a routing id libzmq made up rather than one a worker set: never a worker.

Every agent sets its own id (`zmq.IDENTITY`) and reconnects with it. When it does, the
worker socket's ROUTER_HANDOVER gives the id to the new connection and renames the old one:
what was still unread on the old connection (a READY, results resent after a master restart)
then arrives under an id libzmq generated, 5 bytes whose first is zero (an id a peer sets may
not start with a zero byte). Taken for a worker, that "phantom" was leased shards, expired
a few seconds later and charged each shard an attempt (issue 36).

So a worker is known only by the id it set. Under a generated id a result or failure is
matched to the real worker whose attempt it reports (the shard's history names it, or the
worker now holding the shard); everything else is refused and never registered.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import Counter

from shardmill.errors import ProtocolError
from shardmill.master.brain.model import Job
from shardmill.wire.codec import unpack_header

log = logging.getLogger(__name__)
REPORTS = ("done", "failed")  # what a dead connection may still carry that must not be lost
REFUSAL = (
    "this connection has no id of its own (ZeroMQ made one up: it was replaced by a newer "
    "connection with the same id, or the peer set none); a worker sets its id (zmq.IDENTITY) "
    "and reconnects with it: its messages are read only on that connection"
)


def generated(identity: bytes) -> bool:
    """Whether libzmq made this routing id up (peers may not choose one starting with 0)."""
    return identity[:1] == b"\x00"


def report_key(part: Sequence[Any]) -> tuple[str, int, int] | None:
    """(job, shard, attempt) of a result or failure message; None for any other message."""
    try:
        raw = unpack_header(part[0])
    except ProtocolError:
        return None
    if raw.get("kind") not in REPORTS:
        return None
    job_id, shard, attempt = raw.get("job_id"), raw.get("shard"), raw.get("attempt")
    if type(job_id) is not str or type(shard) is not int or type(attempt) is not int:
        return None
    return job_id, shard, attempt


def owner(jobs: Mapping[str, Job], job_id: str, shard: int, attempt: int) -> str | None:
    """The worker whose attempt this is: as the shard's history names it, else the worker
    holding the shard now (a restarted master adopts held shards without their history)."""
    job = jobs.get(job_id)
    if job is None or job.finished or not 0 <= shard < len(job.shards):
        return None  # a finished job's result is a duplicate anyway
    found = job.shards[shard]
    for a in reversed(found.history):
        if a.number == attempt:
            return a.worker
    return found.lease


class Unnamed:
    """Claims reports that arrived under generated ids, and counts them (`outcome` label:
    matched or refused)."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def claim(self, jobs: Mapping[str, Job], part: Sequence[Any], identity: bytes) -> str | None:
        """The real worker a part under a generated id speaks for, or None: refused."""
        key = report_key(part)
        worker = None if key is None else owner(jobs, *key)
        if worker is None:
            self.counter.labels("refused").inc()
            log.info(
                "refused a message under generated id 0x%s (no worker set that id): %s",
                identity.hex(),
                "not a result or failure" if key is None else f"no attempt {key} is running",
            )
            return None
        self.counter.labels("matched").inc()
        log.info("a report under generated id 0x%s is worker %s's", identity.hex(), worker)
        return worker
