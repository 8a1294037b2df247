"""The thread behind `shardmill.futures.Executor`: it alone owns a Client, sends pending calls
as map jobs (one shard per call, or per chunk of `Executor.map`), streams their outcomes back
as they finish and settles each call's future."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import BrokenExecutor, Future
from dataclasses import dataclass
from typing import Any

from shardmill.client import Client
from shardmill.errors import JobFailed, MasterUnreachable, ShardmillError, server_error
from shardmill.job import HOLD, unpack_result
from shardmill.ops.calls import Encoder, outcome
from shardmill.wire.codec import Decoded, pack_value, unpack_value
from shardmill.wire.protocol import ErrorReply, JobResult, ResultQuery, Submit
from shardmill.wire.spec import job_spec

log = logging.getLogger(__name__)
Call = tuple[Callable[..., Any], Sequence[Any], Mapping[str, Any]]


@dataclass
class Work:
    """One future's calls: one for `submit`, a chunk for `map` (its result: their outcomes)."""

    future: Future[Any]
    calls: list[Call]
    chunk: bool = False

    def settle(self, values: list[Any] | None, failure: BaseException | None = None) -> None:
        if self.future.done():  # cancelled while pending, or settled already
            return
        if values is None or failure is not None:
            self.future.set_exception(failure or JobFailed("the call's shard failed"))
        elif self.chunk:
            self.future.set_result(values)
        else:
            try:
                self.future.set_result(outcome(values[0]))
            except BaseException as e:  # what the call raised, with its remote cause
                self.future.set_exception(e)


@dataclass
class Flight:
    """A map job in flight: its works by their first item's index, and the stream's cursor."""

    job_id: str
    works: dict[int, Work]
    after: int = 0
    run: str = ""
    asking: bool = False  # a query of ours about it waits for its answer


class Dispatcher:
    """Runs on its own thread; `put` and `stop` are the only calls from other threads."""

    def __init__(self, client: Client, *, window: int, encoder: Encoder, attempts: int) -> None:
        self.client, self.window, self.encoder, self.attempts = client, window, encoder, attempts
        self.pending: collections.deque[Work] = collections.deque()
        self.flights: dict[str, Flight] = {}
        self.asked: dict[int, Callable[[Decoded], None]] = {}
        self.lock = threading.Lock()
        self.stopping = False
        self.broken: BaseException | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.thread = threading.Thread(target=self._run, name="shardmill-futures", daemon=True)
        self.thread.start()

    # ---- from other threads --------------------------------------------------------------------

    def put(self, work: Work) -> None:
        with self.lock:
            if self.broken is not None:
                raise BrokenExecutor(str(self.broken))
            self.pending.append(work)
            self._wake()

    def stop(self, *, cancel: bool) -> None:
        with self.lock:
            self.stopping = True
            if cancel:
                for work in self.pending:
                    work.future.cancel()
            self._wake()

    def _wake(self) -> None:
        """With the lock held: the thread's poll returns (a no-op once it has ended)."""
        if self._wake_w < 0:
            return
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            os.write(self._wake_w, b"x")

    # ---- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._turn():
                pass
        except MasterUnreachable as e:
            self._break(e)
        except BaseException as e:  # a broken invariant: every waiting future hears of it
            log.error("shardmill futures thread failed", exc_info=e)
            self._break(e)
        finally:
            self.client.close()
            with self.lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_w = -1

    def _turn(self) -> bool:
        """Send what may go, ask for news of every job in flight, handle one reply; False
        once stopped with nothing left."""
        self._send_pending()
        with self.lock:
            if self.stopping and not self.pending and not self.flights:
                return False
        for flight in self.flights.values():
            if not flight.asking:
                self._ask(flight)
        self._receive()
        return True

    def _receive(self) -> None:
        wait = HOLD * 2 + self.client.connect_timeout
        try:
            reply = self.client._next_reply(set(self.asked), wait, wake=self._wake_r)
        except MasterUnreachable:
            self.asked.clear()  # the socket was reset with the questions
            for flight in self.flights.values():
                flight.asking = False
            if self.client._still_lost(None) is not None:  # raises past the reconnect timeout
                self._ride_out()
            return
        if reply is None:
            os.read(self._wake_r, 4096)
            return
        handle = self.asked.pop(getattr(reply.msg, "req", 0))
        handle(reply)

    def _ride_out(self) -> None:
        """The master is gone: ping until it is back or the reconnect timeout is over."""
        since: float | None = None
        while (since := self.client._still_lost(since)) is not None:
            pass

    def _send_pending(self) -> None:
        busy = sum(len(f.works) for f in self.flights.values())
        batch: list[Work] = []
        with self.lock:
            while self.pending and busy + len(batch) < self.window:
                work = self.pending.popleft()
                if not work.future.cancelled():
                    batch.append(work)
        by_function: dict[str, list[Work]] = {}
        for work in batch:
            if not work.future.set_running_or_notify_cancel():
                continue
            try:
                function = self.encoder.function(work.calls[0][0])
            except ShardmillError as e:
                work.future.set_exception(e)
                continue
            by_function.setdefault(function, []).append(work)
        for function, works in by_function.items():
            self._submit(function, works)

    def _submit(self, function: str, works: list[Work]) -> None:
        parts, counts, part_arrays, arrays, by_first, first = [], [], [], [], {}, 0
        for work in works:
            try:
                packed = pack_value([self.encoder.item(*call) for call in work.calls])
            except Exception as e:  # arguments the codec cannot send: that future's error
                work.future.set_exception(e)
                continue
            parts.append(packed.data)
            counts.append(len(work.calls))
            part_arrays.append(len(packed.arrays))
            arrays.extend(packed.arrays)
            by_first[first] = work
            first += len(work.calls)
        if not parts:
            return
        spec = job_spec(
            op="map",
            function=function,
            name="futures",
            max_attempts=self.attempts,
            allow_failures=len(parts),  # a lost call fails its own future, not the others
        )
        job_id = uuid.uuid4().hex[:12]
        msg = Submit(spec=spec, parts=parts, part_counts=counts, part_arrays=part_arrays)
        flight = Flight(job_id, by_first)
        self.flights[job_id] = flight
        self._send(msg.model_copy(update={"job_id": job_id}), arrays, self._submitted(flight))

    def _submitted(self, flight: Flight) -> Callable[[Decoded], None]:
        def handle(reply: Decoded) -> None:
            if isinstance(reply.msg, ErrorReply):  # refused: each of its calls hears why
                error = server_error(reply.msg.code, reply.msg.message)
                self._end(flight, error)

        return handle

    def _send(self, msg: Any, arrays: Sequence[Any], handle: Callable[[Decoded], None]) -> None:
        self.asked[self.client._send_request(msg, arrays)] = handle

    def _ask(self, flight: Flight) -> None:
        query = ResultQuery(job_id=flight.job_id, after=flight.after, hold=HOLD)
        flight.asking = True
        self._send(query, (), lambda reply: self._news(flight, reply))

    def _news(self, flight: Flight, reply: Decoded) -> None:
        flight.asking = False
        msg = reply.msg
        if isinstance(msg, ErrorReply):
            self._end(flight, server_error(msg.code, msg.message))
            return
        assert isinstance(msg, JobResult)
        if msg.run != flight.run:
            restarted, flight.run = bool(flight.run), msg.run
            if restarted:  # a master restarted: count from its start, skip what we have
                flight.after = 0
                return
        offset = 0
        for first, part, k in zip(msg.first_items, msg.parts, msg.part_arrays, strict=True):
            work = flight.works.pop(first, None)
            if work is not None:
                values = unpack_value(part, reply.arrays[offset : offset + k])
                work.settle(values, None if None not in values else _lost(msg))
            offset += k
        flight.after = msg.next
        if msg.job.state == "done" and not msg.parts:
            self._end(flight, None)
        elif msg.job.state != "running" and not msg.parts:  # its failure, then the end
            flight.asking = True
            query = ResultQuery(job_id=flight.job_id, wait=True)
            self._send(query, (), lambda reply: self._end(flight, _failure(reply)))

    def _end(self, flight: Flight, error: BaseException | None) -> None:
        """The job is over: calls without an outcome fail with `error` (or as lost)."""
        self.flights.pop(flight.job_id, None)
        for work in flight.works.values():
            work.settle(None, error or JobFailed(f"job {flight.job_id} lost this call"))
        flight.works.clear()

    def _break(self, error: BaseException) -> None:
        """Every call not yet settled, and every later submit, fails with BrokenExecutor."""
        broken = BrokenExecutor(f"the shardmill executor is broken: {error}")
        broken.__cause__ = error
        with self.lock:
            self.broken = broken
            works = [*self.pending, *(w for f in self.flights.values() for w in f.works.values())]
            self.pending.clear()
            self.flights.clear()
        for work in works:
            if not work.future.done():
                work.settle(None, broken)


def _failure(reply: Decoded) -> BaseException:
    """What a failed job's result query says, as the exception `Job.result` raises."""
    if isinstance(reply.msg, ErrorReply):
        return server_error(reply.msg.code, reply.msg.message)
    assert isinstance(reply.msg, JobResult)
    try:
        unpack_result(reply.msg, reply.arrays)
    except ShardmillError as e:
        return e
    return JobFailed(f"job {reply.msg.job.job_id} ended without every call's outcome")


def _lost(msg: JobResult) -> JobFailed:
    """A call whose shard failed on every attempt (a crash, a kill, a timeout)."""
    return JobFailed(
        f"job {msg.job.job_id}: the call's shard failed on every attempt; the last failure: "
        f"{msg.job.last_failure}"
    )
