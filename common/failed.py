"""`Failed`: what a map job run with `allow_failures` returns in place of a lost item's value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Failed:
    """The item's shard failed for good under `allow_failures`; no value came back.

    Tell it apart with `isinstance(value, shardmill.Failed)` (a task may itself return None).
    It is falsy, so `[v for v in results if v]` drops it too. The errors of each attempt:
    `job.status(shards=True).shards[shard].history`, or `shardmill why JOB SHARD`."""

    job_id: str
    shard: int

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return (
            f"failed: job {self.job_id} shard {self.shard} "
            f"(`shardmill why {self.job_id} {self.shard}` tells why)"
        )

    def to_json(self) -> dict[str, Any]:
        return {"failed": True, "job_id": self.job_id, "shard": self.shard}


def mark_failed(job_id: str, chunks: list[Any], missing: list[int]) -> list[Any]:
    """A map job's items in input order, one chunk per shard; a missing shard's are `Failed`."""
    lost = set(missing)
    return [
        Failed(job_id, shard) if shard in lost else value
        for shard, chunk in enumerate(chunks)
        for value in (chunk or [])
    ]


__all__ = ["Failed", "mark_failed"]
