"""joblib on a shardmill cluster: `import shardmill.joblib` registers the "shardmill" backend.

    import joblib
    import shardmill.joblib  # noqa: F401

    with joblib.parallel_config(backend="shardmill", master="tcp://master:5556"):
        results = joblib.Parallel(n_jobs=-1)(joblib.delayed(mymod.work)(i) for i in range(10_000))

joblib's batches become map jobs of the calls in them (joblib sizes batches to run 0.2-2 s
each, from their measured time); `n_jobs` counts the cluster's slots (-1: all of them, -2: all
but one) and about twice that many batches are out at once. Module-level functions go by name,
their NumPy arguments as frames; `pickle=True` sends everything with cloudpickle (estimators,
lambdas: scikit-learn needs it), where the cluster allows it (see shardmill.ops.calls).

A `Parallel` inside a task runs on that worker, as joblib's nested calls do in a loky worker:
each call runs under the nested backend joblib chose for its batch (threads, then sequential),
and "shardmill" named there means the same, since a worker has no client keys to reach the
master with (and a task waiting on the cluster's own slots could wait for ever).
"""

from __future__ import annotations

import os
from typing import Any

import joblib
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase, ThreadingBackend

from shardmill.client import Client
from shardmill.futures import Executor
from shardmill.ops.calls import outcome

NAME = "shardmill"


class ShardmillBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's backend for shardmill: batches of calls as map jobs, through an Executor."""

    supports_retrieve_callback = True
    supports_timeout = True
    uses_threads = False
    supports_sharedmem = False
    default_n_jobs = -1

    def __init__(
        self,
        master: str | None = None,
        *,
        pickle: bool = False,
        keys: str | os.PathLike[str] | None = None,
        insecure: bool | None = None,
        max_attempts: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.options: dict[str, Any] = {"master": master, "keys": keys, "insecure": insecure}
        self.pickle, self.max_attempts = pickle, max_attempts
        self.executor: Executor | None = None
        self._slots: int | None = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """Slots of the cluster: -1 all of them, -k all but k-1; a positive count as given."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or n_jobs < 0:
            return max(1, self._cluster_slots() + 1 + (n_jobs or -1))
        return int(n_jobs)

    def _cluster_slots(self) -> int:
        if self._slots is None:
            with Client(**self.options) as client:
                self._slots = sum(w.slots for w in client.workers())
        return self._slots

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        n = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        if self.executor is None:
            client = Client(**self.options)
            self.executor = Executor(
                client=client, max_workers=2 * n, pickle=self.pickle, max_attempts=self.max_attempts
            )
        return n

    def submit(self, func: Any, callback: Any = None) -> Any:
        """A batch of calls (joblib's BatchedCalls) as one future of their outcomes."""
        assert self.executor is not None, "joblib configures a backend before it submits"
        calls = getattr(func, "items", None) or [(func, (), {})]
        nested = getattr(func, "_backend", None)
        if self.pickle and nested is not None:  # joblib's BatchedCalls: keep its nested backend
            calls = [(_nested_call, ((nested, func._n_jobs), f, *a), kw) for f, a, kw in calls]
        future = self.executor._put(list(calls), chunk=True)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Any) -> list[Any]:
        return [outcome(value) for value in future.result()]

    def retrieve_result(self, future: Any, timeout: float | None = None) -> list[Any]:
        return [outcome(value) for value in future.result(timeout)]

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call raised: what is not sent yet is dropped."""
        self.terminate()
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)

    def terminate(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
        self.reset_batch_stats()


def _nested_call(nested: tuple[Any, Any], fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """One call of a batch, on a worker, under the nested backend joblib chose for the batch
    (what joblib's BatchedCalls does in a loky worker). Sent pickled, by reference: unpickling
    it imports this module there, which registers "shardmill" on the worker too."""
    backend, n_jobs = nested
    with joblib.parallel_config(backend=backend, n_jobs=n_jobs):
        return fn(*args, **kwargs)


def backend(**kwargs: Any) -> ParallelBackendBase:
    """What joblib makes of "shardmill": the cluster from a client; inside a task on a worker
    (SHARDMILL_WORKER_ID is set there), joblib's own nested backend, threads on that worker."""
    if os.environ.get("SHARDMILL_WORKER_ID"):
        return ThreadingBackend(nesting_level=kwargs.get("nesting_level"))
    return ShardmillBackend(**kwargs)


joblib.register_parallel_backend(NAME, backend)
