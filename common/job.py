"""A handle on one submitted job (its progress, its cancellation, its merged result), and
results as they finish: a map job's items while it runs, and jobs in the order they end."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import zmq

from shardmill.debug.echo import show_output
from shardmill.errors import (
    HandshakeRefused,
    JobCancelled,
    JobFailed,
    JobTimeout,
    MasterUnreachable,
    RemoteError,
    mark_failed,
    server_error,
)
from shardmill.wire.codec import Decoded, decode, pack_value, unpack_value
from shardmill.wire.handshake import HandshakeWatch, unreachable
from shardmill.wire.protocol import ErrorReply, JobInfo, JobResult, Message, ResultQuery, Submit
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

    def as_completed(self, timeout: float | None = None) -> Iterator[tuple[int, Any]]:
        """A map job's `(index, value)` pairs as its shards finish, while it runs."""
        return stream_results(self.client, self.id, timeout)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return self.as_completed()

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
    one answers; what the last one raised if none does. A refused handshake moves on too: a
    standby's published port behind Docker's proxy accepts and hangs up, which looks the same."""
    for tries_left in range(len(client._masters) - 1, -1, -1):
        try:
            return exchange()
        except (MasterUnreachable, HandshakeRefused):
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
    values = _values(msg, arrays)
    if info.op == "map":
        return mark_failed(info.job_id, values, list(info.missing_shards))
    return values[0]


def _failed_shard(info: JobInfo) -> int | None:
    return info.missing_shards[0] if info.missing_shards else None


HOLD = LONG_POLL / 2  # the master answers a stream query within this, news or not
NEVER = 2**62  # a stream cursor past any job's end: answered only when the job ends


def stream_results(
    client: Client, job_id: str, timeout: float | None = None
) -> Iterator[tuple[int, Any]]:
    """`(index, value)` of each item of a map job as its shard is merged, while the job runs;
    raises as `Job.result` does if the job fails. A master restarted meanwhile streams from
    its start again: items seen already are skipped."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: set[int] = set()
    after, run = 0, ""
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        query = ResultQuery(job_id=job_id, after=after, hold=HOLD)
        reply = long_poll(client, query, left, f"job {job_id}")
        msg = _result(reply)
        if not msg.run and msg.job.state != "running":  # archived: the whole result at once
            yield from enumerate(unpack_result(msg, reply.arrays))
            return
        if msg.run != run:
            restarted, run = bool(run), msg.run
            if restarted:  # the cursor counted another run's merges
                after = 0
                continue
        yield from _items(msg, _values(msg, reply.arrays), seen)
        after = msg.next
        if msg.job.state != "running" and not msg.parts:
            if msg.job.state != "done":
                Job(client, job_id).result()  # raises what the job failed with
            return


class StreamCalls:
    """A part of `Client`: replies to several requests at once, and jobs as they end."""

    master: str
    _masters: list[str]
    _at: int
    _epoch: int
    connect_timeout: float
    reconnect_timeout: float
    _watch: HandshakeWatch | None
    _poller: zmq.Poller | None

    def ping(self, timeout: float | None = None) -> Any:
        raise NotImplementedError  # the Client's

    def _send_request(self, msg: Message, arrays: Sequence[Any]) -> int:
        raise NotImplementedError  # the Client's

    def _socket(self) -> zmq.Socket[bytes]:
        raise NotImplementedError  # the Client's

    def _reset(self) -> None:
        raise NotImplementedError  # the Client's

    def _await_reply(self, req: int | set[int], wait: float) -> Decoded:
        """The reply to `req` (or to any of them), skipping stale ones; an error reply raised."""
        reply = self._next_reply({req} if isinstance(req, int) else req, wait)
        assert reply is not None
        if isinstance(reply.msg, ErrorReply):
            raise server_error(reply.msg.code, reply.msg.message)
        return reply

    def _next_reply(self, reqs: set[int], wait: float, wake: int | None = None) -> Decoded | None:
        """The next reply to any of `reqs`, an ErrorReply as it came; None as soon as the file
        descriptor `wake` is readable. MasterUnreachable (the socket reset) after `wait` s."""
        sock = self._socket()
        assert self._poller is not None
        poller = self._poller
        if wake is not None:
            poller.register(wake, zmq.POLLIN)
        try:
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                ready = dict(poller.poll(int(left * 1000) + 1))
                if not ready:
                    break
                self._check_link()
                if wake is not None and wake in ready:
                    return None
                if sock not in ready:
                    continue
                reply = decode(sock.recv_multipart(copy=False))
                self._check_epoch(reply.msg.epoch)
                if getattr(reply.msg, "req", None) in reqs:
                    return reply
                show_output(reply.msg)  # a watched job's task output; else a stale reply
        finally:
            if wake is not None and self._poller is poller:
                poller.unregister(wake)
        self._reset()
        raise MasterUnreachable(unreachable(self._masters[self._at], f"no answer in {wait:.1f} s"))

    def _check_link(self) -> None:
        """Raise (the socket reset) if the handshake was refused or nothing listens there."""
        assert self._watch is not None
        if problem := self._watch.check():
            self._reset()
            raise HandshakeRefused(f"{problem} (master {self.master})")
        if self._watch.nothing_listening():
            self._reset()
            raise MasterUnreachable(unreachable(self.master, "nothing is listening there"))

    def _check_epoch(self, epoch: int) -> None:
        """A master below the highest epoch heard was replaced by its standby: refused."""
        if epoch < self._epoch:
            self._reset()
            raise MasterUnreachable(
                f"the master at {self._masters[self._at]} speaks for epoch {epoch}, below "
                f"{self._epoch}: it was replaced by its standby; asking the next one"
            )
        self._epoch = epoch

    def as_completed(self, jobs: Iterable[Job], timeout: float | None = None) -> Iterator[Job]:
        """Each job once it has ended (done, failed or cancelled), first ended first; raises
        JobTimeout if some have not ended within `timeout` seconds."""
        pending = {job.id: job for job in jobs}
        deadline = None if timeout is None else time.monotonic() + timeout
        asked: dict[int, str] = {}
        lost_since: float | None = None
        while pending:
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(f"{len(pending)} of the jobs did not end within {timeout} s")
            for job_id in set(pending) - set(asked.values()):
                query = ResultQuery(job_id=job_id, after=NEVER, hold=HOLD)
                asked[self._send_request(query, ())] = job_id
            try:
                reply = self._await_reply(set(asked), LONG_POLL)
            except MasterUnreachable:  # the socket was reset with the questions: ask again
                asked = {}
                lost_since = self._still_lost(lost_since)
                continue
            lost_since = None
            msg = _result(reply)
            job_id = asked.pop(msg.req)
            if msg.job.state != "running":
                yield pending.pop(job_id)

    def _still_lost(self, since: float | None) -> float | None:
        """None when the master answers a ping; else since when it is lost, raising
        MasterUnreachable once that is longer than the reconnect timeout (it may be
        restarting from its checkpoint meanwhile)."""
        try:
            self.ping()
            return None
        except MasterUnreachable:
            now = time.monotonic()
            since = since or now - self.connect_timeout
            if now - since > self.reconnect_timeout:
                raise
            return since


def _result(reply: Decoded) -> JobResult:
    assert isinstance(reply.msg, JobResult)
    return reply.msg


def _values(msg: JobResult, arrays: list[Any]) -> list[Any]:
    values, offset = [], 0
    for part, k in zip(msg.parts, msg.part_arrays, strict=True):
        values.append(unpack_value(part, arrays[offset : offset + k]))
        offset += k
    return values


def _items(msg: JobResult, values: list[Any], seen: set[int]) -> Iterator[tuple[int, Any]]:
    for first, chunk in zip(msg.first_items, values, strict=True):
        if first in seen:
            continue
        seen.add(first)
        for i, value in enumerate(chunk or []):
            yield first + i, value


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
