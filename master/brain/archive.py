"""Finished jobs as the brain keeps them: a summary each, or the whole job within a budget.

With a state dir, a finished job shrinks to a `JobSummary` (state, counts, times, owner, the
error): its shards' stories, timings and result stay in the state dir and are read when asked
(master/history.py). A master restarted on a week of history reads summaries only, and
decodes them when they are first asked for (a listing, a finished job's status, the first
pruning pass, 2 s after the start): it answers clients and hands out work before that.

Without a state dir there is nowhere else for the details to be: a finished job stays whole,
but only within a budget (a count and bytes of results); past it the oldest are forgotten,
and a client asking for one is told so (`Archive.forgotten`).
"""

from __future__ import annotations

import collections
import gc
import heapq
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from shardmill.master.brain.model import Job
from shardmill.master.brain.transitions import ShardState
from shardmill.wire.protocol import JobInfo

S = ShardState


@dataclass(slots=True)
class JobSummary:
    """What a finished job is in memory once its details are in the state dir; times are
    wall-clock seconds. Packed as a list (`pack`) in the state dir's summaries table."""

    job_id: str
    name: str
    owner: str
    op: str
    state: str
    shards_total: int
    shards_done: int
    shards_failed: int
    submitted_at: float
    started_at: float | None
    finished_at: float
    error: str | None
    duplicates: int
    attempts_failed: int
    lost_workers: tuple[str, ...]
    last_failure: str | None
    missing_shards: tuple[int, ...]
    resent: int  # copies of merged executions' results that came again (JobInfo.resent)
    restarts: tuple[float, ...]  # the master's starts while it ran

    @classmethod
    def of(cls, job: Job, offset: float) -> JobSummary:
        """`job`'s summary; `offset` turns the brain's clock into wall-clock time."""
        info = job.info(offset=offset)
        return cls.unpack(
            [
                info.job_id,
                info.name,
                info.owner,
                info.op,
                info.state,
                info.shards_total,
                info.shards_done,
                info.shards_failed,
                info.submitted_at,
                info.started_at,
                info.finished_at or info.submitted_at,
                info.error,
                info.duplicates,
                info.attempts_failed,
                info.lost_workers,
                info.last_failure,
                info.missing_shards,
                info.resent,
                info.restarts,
            ]
        )

    @classmethod
    def unpack(cls, row: list[object]) -> JobSummary:
        """From `pack`'s list; the strings many summaries share (owner, op, state) interned."""
        s = cls(*row)  # type: ignore[arg-type]
        s.owner, s.op, s.state = sys.intern(s.owner), sys.intern(s.op), sys.intern(s.state)
        s.lost_workers = tuple(s.lost_workers)
        s.missing_shards = tuple(s.missing_shards)
        s.restarts = tuple(s.restarts)
        return s

    def pack(self) -> list[object]:
        return [getattr(self, f) for f in self.__slots__]

    def listed(self) -> dict[str, Any]:
        """`info().model_dump()`, without the model: a week of history is 100,000 of them in
        one `jobs` reply, and the models made it seconds long and hundreds of MiB big."""
        return {
            "job_id": self.job_id,
            "name": self.name,
            "op": self.op,
            "state": self.state,
            "owner": self.owner,
            "shards_total": self.shards_total,
            "shards_done": self.shards_done,
            "shards_failed": self.shards_failed,
            "shards_running": 0,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "duplicates": self.duplicates,
            "attempts_failed": self.attempts_failed,
            "shards_retrying": 0,
            "lost_workers": list(self.lost_workers),
            "last_failure": self.last_failure,
            "missing_shards": list(self.missing_shards),
            "shards": None,
            "resent": self.resent,
            "restarts": list(self.restarts),
        }

    def info(self) -> JobInfo:
        return JobInfo(**self.listed())


class Archive:
    """Finished jobs' summaries by id, and the budget of whole finished jobs kept without a
    state dir: (id, bytes) oldest first, and how many were forgotten past it."""

    def __init__(self) -> None:
        self._summaries: dict[str, JobSummary] = {}
        self._by_state: collections.Counter[str] = collections.Counter()
        self._packed: tuple[bytes, ...] = ()  # read back at a restart, not decoded yet
        self.kept: collections.deque[tuple[str, int]] = collections.deque()
        self.kept_bytes = 0
        self.forgotten = 0

    def defer(self, packed: tuple[bytes, ...]) -> None:
        """Summaries read back from the state dir (`JobSummary.pack`, msgpack), decoded when
        first asked for."""
        self._packed += packed

    @property
    def summaries(self) -> dict[str, JobSummary]:
        if self._packed:
            self._decode()
        return self._summaries

    @property
    def by_state(self) -> collections.Counter[str]:
        if self._packed:
            self._decode()
        return self._by_state

    def _decode(self) -> None:
        """The garbage collector is off meanwhile: a week of history is 100,000 new objects,
        and its passes over them were a quarter of the time."""
        packed, self._packed = self._packed, ()
        unpack, collecting = msgpack.unpackb, gc.isenabled()
        gc.disable()
        try:
            for one in packed:
                self._add(JobSummary.unpack(unpack(one)))
        finally:
            if collecting:
                gc.enable()

    def add(self, summary: JobSummary) -> None:
        if self._packed:
            self._decode()
        self._add(summary)

    def _add(self, summary: JobSummary) -> None:
        old = self._summaries.pop(summary.job_id, None)
        if old is not None:
            self._by_state[old.state] -= 1
        self._summaries[summary.job_id] = summary
        self._by_state[summary.state] += 1

    def drop(self, job_id: str) -> JobSummary | None:
        summary = self.summaries.pop(job_id, None)
        if summary is not None:
            self._by_state[summary.state] -= 1
        return summary

    def get(self, job_id: str) -> JobSummary | None:
        return self.summaries.get(job_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.summaries

    def __iter__(self) -> Iterator[JobSummary]:
        return iter(self.summaries.values())

    def __len__(self) -> int:
        return len(self._summaries) + len(self._packed)  # no need to decode to count

    def keep(self, job_id: str, size: int, *, count: int, total: int) -> list[str]:
        """Keep a whole finished job of `size` bytes; the oldest kept jobs past `count` jobs
        or `total` bytes (never the newest one) are forgotten: returned."""
        self.kept.append((job_id, size))
        self.kept_bytes += size
        gone = []
        while len(self.kept) > 1 and (len(self.kept) > count or self.kept_bytes > total):
            old, old_size = self.kept.popleft()
            self.kept_bytes -= old_size
            gone.append(old)
        return gone


def newest_finished(
    live: list[JobInfo], archived: Sequence[JobSummary], n: int
) -> tuple[list[JobInfo], list[JobSummary]]:
    """Every unfinished job of `live`, and of its finished ones and `archived` only the `n`
    that finished last (each list in its own order)."""
    ends = [(i.finished_at or 0.0, k, False) for k, i in enumerate(live) if i.state != "running"]
    ends += [(s.finished_at, k, True) for k, s in enumerate(archived)]
    kept = heapq.nlargest(n, ends)
    keep_live = {k for _, k, was_archived in kept if not was_archived}
    keep_archived = sorted(k for _, k, was_archived in kept if was_archived)
    return (
        [i for k, i in enumerate(live) if i.state == "running" or k in keep_live],
        [archived[k] for k in keep_archived],
    )
