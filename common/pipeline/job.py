"""A running pipeline, as `client.run(p)` returns it: progress per stage, result, cancel, story.

The stages are driven from a thread of this process with a connection of its own (a Client is
not shared between threads); each stage is a job on the master, checkpointed like any other.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from shardmill.pipeline.api import Pipeline
from shardmill.pipeline.driver import PipelineFailed, PipelineState, StageProgress, drive
from shardmill.pipeline.plan import compile_stages

if TYPE_CHECKING:
    from shardmill.client import Client


class PipelineJob:
    def __init__(
        self,
        client: Client,
        pipeline: Pipeline,
        *,
        name: str = "",
        fetch_timeout: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        if not pipeline.steps:
            raise ValueError("the pipeline is empty: start it with Pipeline.read(...)")
        stages = compile_stages(pipeline.steps)
        # Another thread's connection to the same master, with the same keys.
        self._own = type(client)(
            client.master,
            connect_timeout=client.connect_timeout,
            keys=client.security.keys,
            insecure=client.security.insecure,
        )
        self.state = PipelineState(stages, name=name, fetch_timeout=fetch_timeout)
        self._max_attempts = max_attempts
        self._cancelled = threading.Event()
        self._current: str | None = None  # the stage job running now
        self._client = client
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drive, name="pipeline", daemon=True)
        self._thread.start()

    def _drive(self) -> None:
        try:
            self._value = drive(
                self.state,
                self._own,
                self._cancelled,
                max_attempts=self._max_attempts,
                on_job=self._started,
            )
        except BaseException as e:  # handed to whoever calls result()
            self._error = e
        finally:
            self._own.close()

    def _started(self, job_id: str) -> None:
        self._current = job_id

    def result(self, timeout: float | None = None) -> Any:
        """The collected table, or for `write` {"files": [...], "rows": n}; raises
        PipelineFailed naming the stage and shard when one failed for good."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the pipeline did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value

    def done(self) -> bool:
        return not self._thread.is_alive()

    def progress(self) -> list[StageProgress]:
        """Per stage: shards done, bytes shuffled (written to the workers' shuffle
        directories) and fetched, shards recomputed after a lost worker."""
        return list(self.state.progress)

    @property
    def story(self) -> list[str]:
        """What ran, in order, with every recompute and why."""
        return list(self.state.story)

    @property
    def why(self) -> str | None:
        return None if self._error is None else str(self._error)

    def cancel(self) -> None:
        """Stop after the running stage job is cancelled; `result()` raises PipelineFailed."""
        self._cancelled.set()
        if self._current is not None:
            self._client.cancel(self._current)


__all__ = ["PipelineFailed", "PipelineJob"]
