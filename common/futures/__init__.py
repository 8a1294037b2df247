"""`concurrent.futures` on a shardmill cluster.

    from shardmill.futures import Executor

    with Executor("tcp://master:5556") as ex:        # or Executor(client=cluster.client())
        fut = ex.submit(mymod.work, 3, scale=2.0)    # mymod is imported by the workers
        print(fut.result())
        for value in ex.map(mymod.work, range(100), chunksize=10):
            ...

Futures are the standard library's own: `cancel()` works while a call is pending (not yet
sent to the master: at most `max_workers` calls are out at once) and returns False once it
runs; `as_completed` and `wait` from `concurrent.futures` take them. A call that raised raises
here with the worker's traceback as its `__cause__`. A master lost for longer than the
client's reconnect timeout breaks the executor: every waiting future and every later `submit`
raise `BrokenExecutor`. Functions go by name; `pickle=True` sends the rest with cloudpickle
where the cluster allows it (see shardmill.ops.calls).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import BrokenExecutor, Future
from typing import Any, TypeVar

from shardmill.client import Client
from shardmill.futures.dispatch import Dispatcher, Work
from shardmill.ops.calls import Encoder, outcome

T = TypeVar("T")
__all__ = ["BrokenExecutor", "Executor"]


class Executor(concurrent.futures.Executor):
    """Runs calls on a shardmill cluster's workers; see the module's docstring."""

    def __init__(
        self,
        master: str | None = None,
        *,
        client: Client | None = None,
        max_workers: int | None = None,
        pickle: bool = False,
        max_attempts: int = 3,
        keys: str | os.PathLike[str] | None = None,
        insecure: bool | None = None,
    ) -> None:
        """`client`: use this Client (on the executor's own thread only, from now on) instead
        of connecting to `master`. `max_workers`: calls out at once (default: twice the
        cluster's slots). `max_attempts`: runs of a call whose worker died before it ends."""
        self.client = client or Client(master, keys=keys, insecure=insecure)
        if max_workers is None:
            slots = sum(w.slots for w in self.client.workers())
            max_workers = 2 * max(1, slots)
        if max_workers < 1:
            raise ValueError("max_workers must be greater than 0")
        self.max_workers = max_workers
        self._shutdown = False
        self._dispatcher = Dispatcher(
            self.client, window=max_workers, encoder=Encoder(pickle), attempts=max_attempts
        )

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule `fn(*args, **kwargs)`; a Future of its value."""
        return self._put([(fn, args, kwargs)], chunk=False)

    def _put(self, calls: list[Any], *, chunk: bool) -> Future[Any]:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: Future[Any] = Future()
        self._dispatcher.put(Work(future, calls, chunk=chunk))
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """`fn` over the iterables' items in order, `chunksize` calls to a task; with
        `buffersize`, at most that many chunks are read ahead of the results taken.
        TimeoutError if a result is not there `timeout` seconds after this call."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0.")
        end = None if timeout is None else time.monotonic() + timeout
        chunks = _batched(zip(*iterables, strict=False), chunksize)
        ahead = chunks if buffersize is None else itertools.islice(chunks, buffersize)
        futures = collections.deque(self._chunk(fn, c) for c in ahead)
        return _results(futures, end, refill=lambda: self._refill(fn, chunks, buffersize))

    def _chunk(self, fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> Future[Any]:
        return self._put([(fn, a, {}) for a in args], chunk=True)

    def _refill(
        self, fn: Callable[..., Any], chunks: Iterator[list[Any]], buffersize: int | None
    ) -> Future[Any] | None:
        if buffersize is None:
            return None
        chunk = next(chunks, None)
        return None if chunk is None else self._chunk(fn, chunk)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submits; with `cancel_futures`, calls not yet sent are cancelled. With
        `wait`, returns once every call sent has its outcome."""
        self._shutdown = True
        self._dispatcher.stop(cancel=cancel_futures)
        if wait:
            self._dispatcher.thread.join()


def _batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _results(
    futures: collections.deque[Future[Any]],
    end: float | None,
    *,
    refill: Callable[[], Future[Any] | None],
) -> Iterator[Any]:
    """Each chunk's values in order (raising what a call raised, where it comes); what is
    left is cancelled when the caller stops early."""
    try:
        while futures:
            future = futures.popleft()
            if (more := refill()) is not None:
                futures.append(more)
            left = None if end is None else end - time.monotonic()
            for value in future.result(left):
                yield outcome(value)
    finally:
        for future in futures:
            future.cancel()
