"""The Client's pipeline calls (a part of `shardmill.Client`, kept beside the pipelines)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shardmill.wire.codec import Decoded, pack_value
from shardmill.wire.protocol import (
    JobList,
    JobsQuery,
    Message,
    PipelineInfo,
    SubmitPipeline,
    Submitted,
)

if TYPE_CHECKING:
    from shardmill.pipeline.api import Pipeline
    from shardmill.pipeline.job import PipelineJob


class PipelineCalls:
    """Start a pipeline on the master, list them, take a handle on one."""

    def _request(
        self, msg: Message, arrays: Sequence[Any] = (), *, timeout: float | None = None
    ) -> Decoded:
        raise NotImplementedError  # the Client's

    def run(self, pipeline: Pipeline, **options: Any) -> PipelineJob:
        """Start a pipeline on the master (shardmill.pipeline); `options`: name, fetch_timeout
        (seconds a reduce waits for a peer), max_attempts, edge_budget (bytes a stage's
        output may hold waiting for the next stage; 0: no bound; default the master's)."""
        packed = pack_value(list(pipeline.steps))
        reply = self._request(SubmitPipeline(steps=packed.data, **options), packed.arrays).msg
        assert isinstance(reply, Submitted)
        return self.pipeline(reply.job_id)

    def pipelines(self) -> list[PipelineInfo]:
        reply = self._request(JobsQuery()).msg
        assert isinstance(reply, JobList)
        return list(reply.pipelines)

    def pipeline(self, pipeline_id: str) -> PipelineJob:
        from shardmill.pipeline.job import PipelineJob

        return PipelineJob(self, pipeline_id)  # type: ignore[arg-type]
