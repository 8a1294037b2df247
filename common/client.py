"""The Python API: `Client` talks to a master's client port (see job.py for a handle on one job)."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from shardmill.config import ClientSettings, address_problem, addresses
from shardmill.data.paths import located
from shardmill.errors import (
    ConfigError,
    MasterUnreachable,
    MessageTooLarge,
    ServerError,
)
from shardmill.job import LONG_POLL, Job, StreamCalls, chunked, failing_over, unpack_result
from shardmill.pipeline.calls import PipelineCalls
from shardmill.wire import shm
from shardmill.wire.codec import Decoded, encode, is_array, pack_value
from shardmill.wire.handshake import HandshakeWatch
from shardmill.wire.protocol import (
    CancelJob,
    JobInfo,
    JobList,
    JobResult,
    JobsQuery,
    JobStatus,
    Message,
    MetricsQuery,
    MetricsText,
    Ping,
    Pong,
    PruneJobs,
    StatusQuery,
    Submit,
    Submitted,
    WorkerInfo,
    WorkerList,
    WorkersQuery,
)
from shardmill.wire.security import Security
from shardmill.wire.spec import job_spec
from shardmill.worker.replay import replay

if TYPE_CHECKING:
    import numpy as np


log = logging.getLogger(__name__)
MAX_CHUNKS = 64


class Client(PipelineCalls, StreamCalls):
    """A connection to one master. Not thread-safe: use one Client per thread."""

    def __init__(
        self,
        master: str | None = None,
        *,
        connect_timeout: float | None = None,
        keys: str | os.PathLike[str] | None = None,
        insecure: bool | None = None,
    ) -> None:
        defaults = ClientSettings()
        if problem := address_problem(master or defaults.master, port=5556):
            raise ConfigError(problem)
        key_dir = Path(keys) if keys is not None else defaults.keys
        plain = defaults.insecure if insecure is None else insecure
        self.security = Security.resolve(key_dir, plain and key_dir is None, "client")
        self.max_message_bytes = defaults.max_message_bytes
        self.master = master or defaults.master
        # Masters to try in turn (a primary and its standby), the one asked now, and the
        # highest epoch heard: a master below it was replaced, and is refused.
        self._masters, self._at, self._epoch = addresses(self.master), 0, 0
        self.connect_timeout = connect_timeout or defaults.connect_timeout
        self.reconnect_timeout = defaults.reconnect_timeout
        self.shared_memory = defaults.shared_memory
        self.shm_min_bytes = defaults.shm_min_bytes
        self._master_shares: bool | None = None  # found out with a probe on first need
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock: zmq.Socket[bytes] | None = None
        self._watch: HandshakeWatch | None = None  # the socket's handshake outcomes
        self._met = False  # a handshake with the master succeeded once
        self._poller: zmq.Poller | None = None
        self._ids = itertools.count(1)

    # ---- jobs ----------------------------------------------------------------------------------

    def map(
        self,
        function: str,
        args: Iterable[Sequence[Any]],
        *,
        chunk_size: int | None = None,
        max_attempts: int = 3,
        task_timeout: float | None = None,
        allow_failures: int = 0,
        name: str = "",
        priority: int = 0,
        speculate_after: float | None = None,
        echo: bool = False,
    ) -> Job:
        """Call `function(*a)` for each tuple `a`; `Job.result()` returns results in input order.

        `allow_failures=N`: up to N shards may fail for good (items: `shardmill.Failed`).
        `priority`: higher first within this client's share. `speculate_after`: straggler
        backups at that many times the median (None: the master's setting; 0: never).
        `echo`: print what the tasks print as they run, while this client waits on the job."""
        items = [tuple(a) for a in args]
        spec = job_spec(
            op="map",
            function=function,
            max_attempts=max_attempts,
            task_timeout=task_timeout,
            allow_failures=allow_failures,
            name=name,
            priority=priority,
            speculate_after=speculate_after,
        )
        size = chunk_size or max(1, math.ceil(len(items) / MAX_CHUNKS))
        msg, arrays = chunked(spec, items, size)
        return self._submit(msg.model_copy(update={"echo": echo}), arrays)

    def call(self, function: str, *args: Any, timeout: float | None = None) -> Any:
        """Run one task and return its value (raises RemoteError if it raised)."""
        spec = job_spec(op="map", function=function)
        packed = pack_value([args])
        job_id = uuid.uuid4().hex[:12]
        msg = Submit(
            spec=spec,
            parts=[packed.data],
            part_counts=[1],
            part_arrays=[len(packed.arrays)],
            wait=True,
            job_id=job_id,
        )
        # One round trip: we name the job, so the master answers only with the result. If it
        # is slow to come, fall back to the reconnecting long poll on that job.
        start = time.monotonic()
        patience = LONG_POLL if timeout is None else min(LONG_POLL, timeout)
        try:
            reply = self._submit_exchange(msg, packed.arrays, patience)
        except MasterUnreachable:
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            return Job(self, job_id).result(timeout=left)[0]
        assert isinstance(reply.msg, JobResult)
        return unpack_result(reply.msg, reply.arrays)[0]

    def submit(
        self,
        op: str,
        dataset: str | os.PathLike[str] | np.ndarray | None = None,
        *,
        shards: int | None = None,
        max_attempts: int = 3,
        task_timeout: float | None = None,
        allow_failures: int = 0,
        name: str = "",
        **spec: Any,
    ) -> Job:
        """Run an op (such as "column_stats") over a dataset.

        `dataset` is a path the workers can read (.npy, .csv, or a directory with
        format="npy_dir"), an array (sent by value as zero-copy frames), or None with
        synthetic={...}. `spec` takes any other JobSpec field: strategy, key, columns, ...
        """
        fields: dict[str, Any] = {
            "shards": shards,
            "max_attempts": max_attempts,
            "task_timeout": task_timeout,
            "allow_failures": allow_failures,
            "name": name,
            **spec,
        }
        if fields.get("output") is not None:
            fields["output"] = os.path.abspath(os.fspath(fields["output"]))
        if not is_array(dataset):
            if dataset is not None:
                fields["dataset"] = located(os.fspath(dataset))
            return self._submit(Submit(spec=job_spec(op=op, **fields)), [])
        packed = pack_value(dataset)  # the array's own memory becomes the frame
        msg = Submit(
            spec=job_spec(op=op, format="value", **fields),
            parts=[packed.data],
            part_counts=[int(dataset.shape[0]) if dataset.ndim else 1],
            part_arrays=[len(packed.arrays)],
        )
        return self._submit(msg, list(packed.arrays))

    def job(self, job_id: str) -> Job:
        return Job(self, job_id)

    def _submit(self, msg: Submit, arrays: list[Any]) -> Job:
        exchange = functools.partial(self._submit_exchange, msg, arrays, self.connect_timeout)
        reply = failing_over(self, exchange)
        assert isinstance(reply.msg, Submitted)
        return Job(self, reply.msg.job_id)

    def _submit_exchange(self, msg: Submit, arrays: Sequence[Any], wait: float) -> Decoded:
        """Send a Submit, its big arrays through shared memory when the master can see it."""
        segment = self._to_shared(arrays)
        if segment is None:
            return self._await_reply(self._send_request(msg, arrays), wait)
        name, frames, refs = segment
        try:  # the master renames the segment when it takes the job: removing ours is then a no-op
            shared = msg.model_copy(update={"shm": refs})
            return self._await_reply(self._send_request(shared, frames), wait)
        except ServerError as e:
            if e.code != "shm":
                raise
            self._master_shares = False  # it could not open the segment: send bytes from now on
        finally:
            shm.remove(name)
        return self._await_reply(self._send_request(msg, arrays), wait)

    def _to_shared(self, arrays: Sequence[Any]) -> tuple[str, list[Any], list[Any]] | None:
        if not self.shared_memory or not arrays:
            return None
        if sum(shm.frame_bytes(a) for a in arrays) < self.shm_min_bytes:
            return None
        if not self._shares_memory():
            return None
        try:
            return shm.write_segment(arrays, min_frame=max(1, self.shm_min_bytes // 16))
        except OSError as e:  # /dev/shm full (a container's is 64 MB by default): use the socket
            log.warning("cannot use shared memory (%s); sending the arrays over the socket", e)
            return None

    def _shares_memory(self) -> bool:
        if self._master_shares is None:
            probe = shm.create_probe()
            if probe is None:
                self._master_shares = False
                return False
            try:
                pong = self._request(Ping(shm_probe=probe)).msg
            finally:
                shm.remove(probe)
            self._master_shares = isinstance(pong, Pong) and pong.shared_memory
        return self._master_shares

    # ---- queries -------------------------------------------------------------------------------

    def jobs(self, finished: int | None = None) -> list[JobInfo]:
        """Every unfinished job, and the `finished` most recently finished (None: all)."""
        return list(self.job_list(finished).jobs)

    def job_list(self, finished: int | None = None) -> JobList:
        """As `jobs`, with how many finished jobs the master holds in all."""
        reply = self._request(JobsQuery(finished=finished)).msg
        assert isinstance(reply, JobList)
        return reply

    def workers(self) -> list[WorkerInfo]:
        reply = self._request(WorkersQuery()).msg
        assert isinstance(reply, WorkerList)
        return list(reply.workers)

    def ping(self, timeout: float | None = None) -> Pong:
        reply = self._request(Ping(), timeout=timeout).msg
        assert isinstance(reply, Pong)
        return reply

    def status(self, job_id: str, *, shards: bool = False) -> JobInfo:
        reply = self._request(StatusQuery(job_id=job_id, shards=shards)).msg
        assert isinstance(reply, JobStatus)
        return reply.job

    def metrics(self) -> str:
        """The master's Prometheus metrics, in the text exposition format."""
        reply = self._request(MetricsQuery()).msg
        assert isinstance(reply, MetricsText)
        return reply.text

    def prune(self, older_than: float) -> list[JobInfo]:
        """Forget finished jobs that ended at least `older_than` seconds ago (0: every finished
        job); running jobs and jobs a client waits for are kept. Returns the forgotten ones."""
        reply = self._request(PruneJobs(older_than=older_than)).msg
        assert isinstance(reply, JobList)
        return list(reply.jobs)

    def cancel(self, job_id: str) -> JobInfo:
        reply = self._request(CancelJob(job_id=job_id)).msg
        assert isinstance(reply, JobStatus)
        return reply.job

    # A failed attempt run again here from its bundle in the master's state dir (see replay).
    replay = staticmethod(replay)

    # ---- transport -----------------------------------------------------------------------------

    def _request(
        self,
        msg: Message,
        arrays: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        failover: bool = True,
    ) -> Decoded:
        """Send one request and wait for its reply; stale replies to old requests are skipped.
        With `failover`, a master that does not answer in time is left for the next one."""
        wait = self.connect_timeout if timeout is None else timeout

        def exchange() -> Decoded:
            return self._await_reply(self._send_request(msg, arrays), wait)

        return failing_over(self, exchange) if failover else exchange()

    def _send_request(self, msg: Message, arrays: Sequence[Any]) -> int:
        req = next(self._ids)
        msg = msg.model_copy(update={"req": req})
        frames = encode(msg, arrays)
        size = sum(memoryview(f).nbytes for f in frames)
        if size > self.max_message_bytes:
            raise MessageTooLarge(
                f"this {msg.kind} request is {size:,} bytes, above the limit of "
                f"{self.max_message_bytes:,}; send large data by reference (a dataset path), "
                "in smaller chunks (chunk_size), or raise max_message_bytes on both ends"
            )
        self._socket().send_multipart(frames, copy=False)
        return req

    def _socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            self.security.client(sock, "client")
            keys = self.security.keys
            self._watch = HandshakeWatch(sock, role="client", keys=keys, met=self._met)
            self._poller = zmq.Poller()  # the reply and the handshake's events, one per socket
            self._poller.register(sock, zmq.POLLIN)
            self._poller.register(self._watch.monitor, zmq.POLLIN)
            sock.connect(self._masters[self._at])
            self._sock = sock
        return self._sock

    def _reset(self) -> None:
        # Lazy Pirate: a socket that lost a request is closed, so a late reply cannot confuse us.
        self._master_shares = None  # the master may come back elsewhere
        if self._watch is not None:
            self._met = self._watch.met  # kept across sockets: a restart is not a wrong key
            self._watch.close()
            self._watch = None
            self._poller = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def close(self) -> None:
        self._reset()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
