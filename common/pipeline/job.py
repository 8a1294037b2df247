"""A pipeline the master runs, as `client.run(p)` returns it: progress per stage, result,
cancel, its story. The master plans the stages and drives them (shardmill.master.pipelines);
this handle only asks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardmill.errors import JobCancelled, PipelineFailed
from shardmill.job import long_poll
from shardmill.wire.codec import unpack_value
from shardmill.wire.protocol import (
    CancelJob,
    PipelineInfo,
    PipelineQuery,
    PipelineStatus,
    StageInfo,
)

if TYPE_CHECKING:
    from shardmill.client import Client


class PipelineJob:
    def __init__(self, client: Client, pipeline_id: str) -> None:
        self.client = client
        self.id = pipeline_id

    def __repr__(self) -> str:
        return f"PipelineJob({self.id!r})"

    def status(self) -> PipelineInfo:
        reply = self.client._request(PipelineQuery(pipeline_id=self.id)).msg
        assert isinstance(reply, PipelineStatus)
        return reply.pipeline

    def progress(self) -> list[StageInfo]:
        """Per stage: shards done, bytes shuffled (written to the workers' shuffle
        directories) and fetched, runs spilled, shards recomputed, and why it waits."""
        return self.status().stages

    @property
    def story(self) -> list[str]:
        """What ran, in order, with every recompute and why."""
        return self.status().story

    @property
    def why(self) -> str | None:
        """Why it failed (None while it runs or when it did not)."""
        return self.status().error

    def done(self) -> bool:
        return self.status().state != "running"

    def cancel(self) -> PipelineInfo:
        """Cancel its running stage job and stop; `result()` raises JobCancelled."""
        reply = self.client._request(CancelJob(job_id=self.id)).msg
        assert isinstance(reply, PipelineStatus)
        return reply.pipeline

    def result(self, timeout: float | None = None) -> Any:
        """The collected table, or for `write` {"files": [...], "rows": n}; raises
        PipelineFailed naming the stage and shard when one failed for good."""
        query = PipelineQuery(pipeline_id=self.id, wait=True)
        reply = long_poll(self.client, query, timeout, f"pipeline {self.id}")
        msg = reply.msg
        assert isinstance(msg, PipelineStatus)
        info = msg.pipeline
        if info.state == "cancelled":
            raise JobCancelled(f"pipeline {self.id} was cancelled: {info.error}")
        if info.state != "done":
            raise PipelineFailed(info.error or f"pipeline {self.id} {info.state}")
        return unpack_value(msg.result, reply.arrays)


__all__ = ["PipelineFailed", "PipelineJob"]
