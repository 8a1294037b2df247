"""The client's calls as coroutines, for a running event loop (FastAPI, Jupyter, asyncio).

    from shardmill.aio import AsyncClient

    async with AsyncClient("tcp://master:5556") as client:
        job = await client.map("mymod:work", [(i,) for i in range(100)])
        async for index, value in job:        # as each shard finishes, while the job runs
            ...
        print(await job.result())

The loop never blocks: each call runs on a small pool of threads, each with a `Client` of its
own (a Client is not thread-safe), and a stream of results on a thread of its own.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from shardmill.client import Client
from shardmill.job import Job
from shardmill.wire.protocol import JobInfo, Pong, WorkerInfo

T = TypeVar("T")
__all__ = ["AsyncClient", "AsyncJob"]


class AsyncClient:
    """`shardmill.Client`, awaitable; the same arguments."""

    def __init__(self, master: str | None = None, *, threads: int = 4, **options: Any) -> None:
        """`options`: the Client's (keys, insecure, connect_timeout); `threads`: calls at once."""
        self._options = options
        self.master = master
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="shardmill-aio")
        self._local = threading.local()
        self._clients: list[Client] = []
        self._lock = threading.Lock()

    def new_client(self) -> Client:
        """A Client for one thread, remembered so `close` closes it."""
        client = Client(self.master, **self._options)
        with self._lock:
            self._clients.append(client)
        return client

    def _client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self.new_client()
        return client

    async def _run(self, call: Callable[[Client], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: call(self._client()))

    # ---- the client's calls --------------------------------------------------------------------

    async def map(self, function: str, args: Iterable[Any], **options: Any) -> AsyncJob:
        """As `Client.map`; an AsyncJob."""
        items = list(args)
        job = await self._run(lambda c: c.map(function, items, **options))
        return AsyncJob(self, job.id)

    async def submit(self, op: str, dataset: Any = None, **spec: Any) -> AsyncJob:
        """As `Client.submit`; an AsyncJob."""
        job = await self._run(lambda c: c.submit(op, dataset, **spec))
        return AsyncJob(self, job.id)

    async def call(self, function: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._run(lambda c: c.call(function, *args, timeout=timeout))

    async def jobs(self) -> list[JobInfo]:
        return await self._run(Client.jobs)

    async def workers(self) -> list[WorkerInfo]:
        return await self._run(Client.workers)

    async def ping(self, timeout: float | None = None) -> Pong:
        return await self._run(lambda c: c.ping(timeout))

    async def status(self, job_id: str, *, shards: bool = False) -> JobInfo:
        return await self._run(lambda c: c.status(job_id, shards=shards))

    async def cancel(self, job_id: str) -> JobInfo:
        return await self._run(lambda c: c.cancel(job_id))

    async def prune(self, older_than: float) -> list[JobInfo]:
        return await self._run(lambda c: c.prune(older_than))

    def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, job_id)

    async def as_completed(
        self, jobs: Iterable[AsyncJob], timeout: float | None = None
    ) -> AsyncIterator[AsyncJob]:
        """Each job once it has ended, first ended first (as `Client.as_completed`)."""
        by_id = {job.id: job for job in jobs}

        def ended(client: Client) -> Iterator[Job]:
            return client.as_completed([Job(client, i) for i in by_id], timeout=timeout)

        async for job in self._stream(ended):
            yield by_id[job.id]

    async def _stream(self, make: Callable[[Client], Iterator[T]]) -> AsyncIterator[T]:
        """A blocking iterator's items, read on a thread (and Client) of its own."""
        loop = asyncio.get_running_loop()
        thread = ThreadPoolExecutor(1, thread_name_prefix="shardmill-aio-stream")
        client = self.new_client()
        try:
            items = await loop.run_in_executor(thread, make, client)
            while taken := await loop.run_in_executor(thread, _next, items):
                yield taken[0]
        finally:
            thread.submit(client.close)
            thread.shutdown(wait=False)

    async def close(self) -> None:
        """Once the pool's calls have ended, their clients' sockets are closed."""
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncJob:
    """A handle on a submitted job, awaitable; `async for (index, value) in job` streams a map
    job's results as its shards finish."""

    def __init__(self, client: AsyncClient, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"AsyncJob({self.id!r})"

    async def result(self, timeout: float | None = None) -> Any:
        return await self.client._run(lambda c: Job(c, self.id).result(timeout))

    async def status(self, *, shards: bool = False) -> JobInfo:
        return await self.client.status(self.id, shards=shards)

    async def cancel(self) -> JobInfo:
        return await self.client.cancel(self.id)

    def as_completed(self, timeout: float | None = None) -> AsyncIterator[tuple[int, Any]]:
        make = functools.partial(_stream_of, job_id=self.id, timeout=timeout)
        return self.client._stream(make)

    def __aiter__(self) -> AsyncIterator[tuple[int, Any]]:
        return self.as_completed()


def _stream_of(client: Client, *, job_id: str, timeout: float | None) -> Iterator[tuple[int, Any]]:
    return Job(client, job_id).as_completed(timeout)


def _next(items: Iterator[T]) -> list[T]:
    """The next item, alone in a list; an empty list at the end."""
    return list(itertools.islice(items, 1))
