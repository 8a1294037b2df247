"""A handle on one submitted job: its progress, its cancellation, and its merged result."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardmill.errors import JobCancelled, JobFailed, JobTimeout, MasterUnreachable, RemoteError
from shardmill.failed import mark_failed
from shardmill.wire.codec import Decoded, pack_value, unpack_value
from shardmill.wire.protocol import JobInfo, JobResult, Message, ResultQuery, Submit
from shardmill.wire.spec import JobSpec

if TYPE_CHECKING:
    from shardmill.client import Client

LONG_POLL = 2.0  # a waiting client re-asks this often, so it finds a restarted master quickly


class Job:
    """A handle on a submitted job."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self, *, shards: bool = False) -> JobInfo:
        return self.client.status(self.id, shards=shards)

    def progress(self) -> JobInfo:
        """Shards done, failed and running out of the total, and the job's state."""
        return self.client.status(self.id)

    def cancel(self) -> JobInfo:
        return self.client.cancel(self.id)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the merged result; raises JobTimeout, RemoteError, JobFailed or JobCancelled."""
        reply = long_poll(
            self.client, ResultQuery(job_id=self.id, wait=True), timeout, f"job {self.id}"
        )
        assert isinstance(reply.msg, JobResult)
        return unpack_result(reply.msg, reply.arrays)


def long_poll(client: Client, query: Message, timeout: float | None, what: str) -> Decoded:
    """Ask until the master answers `query` (a wait for an end), riding out a master that
    restarts from its checkpoint for up to the client's reconnect_timeout; JobTimeout past
    `timeout`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    lost_since: float | None = None
    while True:
        left = LONG_POLL if deadline is None else min(LONG_POLL, deadline - time.monotonic())
        if left <= 0:
            raise JobTimeout(
                f"{what} did not finish within {timeout} s; it is still running: follow it "
                f"with `shardmill watch {what.split()[-1]}`"
            )
        try:
            return client._request(query, timeout=left, failover=False)
        except MasterUnreachable:
            # Still running, or is the master gone? A gone master may be restarting from
            # its checkpoint: keep asking for up to the client's reconnect_timeout.
            if deadline is not None and deadline <= time.monotonic():
                continue
            try:
                client.ping()
                lost_since = None
            except MasterUnreachable:
                now = time.monotonic()
                lost_since = lost_since or now - client.connect_timeout
                if now - lost_since > client.reconnect_timeout:
                    raise


def failing_over(client: Client, exchange: Callable[[], Decoded]) -> Decoded:
    """`exchange` with each of the client's masters in turn (a primary and its standby) until
    one answers; MasterUnreachable if none does."""
    for tries_left in range(len(client._masters) - 1, -1, -1):
        try:
            return exchange()
        except MasterUnreachable:
            if not tries_left:
                raise
            client._at = (client._at + 1) % len(client._masters)
    raise AssertionError("unreachable: the last try raises")


def unpack_result(msg: JobResult, arrays: list[Any]) -> Any:
    info = msg.job
    if info.state == "cancelled":
        raise JobCancelled(f"job {info.job_id} was cancelled")
    if info.state != "done":
        err = msg.failure
        text = info.error or f"job {info.job_id} {info.state}"
        if err is not None and err.kind == "error":
            raise RemoteError(
                text,
                remote_type=err.type,
                remote_message=err.message,
                remote_traceback=err.traceback,
                worker=err.worker,
                shard=_failed_shard(info),
            )
        raise JobFailed(text)
    values = []
    offset = 0
    for part, k in zip(msg.parts, msg.part_arrays, strict=True):
        values.append(unpack_value(part, arrays[offset : offset + k]))
        offset += k
    if info.op == "map":
        return mark_failed(info.job_id, values, list(info.missing_shards))
    return values[0]


def _failed_shard(info: JobInfo) -> int | None:
    return info.missing_shards[0] if info.missing_shards else None


def chunked(spec: JobSpec, items: list[tuple[Any, ...]], size: int) -> tuple[Submit, list[Any]]:
    """A map job's Submit, its items packed `size` to a part, and the parts' array frames."""
    parts, counts, part_arrays, arrays = [], [], [], []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        packed = pack_value(chunk)
        parts.append(packed.data)
        counts.append(len(chunk))
        part_arrays.append(len(packed.arrays))
        arrays.extend(packed.arrays)
    return Submit(spec=spec, parts=parts, part_counts=counts, part_arrays=part_arrays), arrays
