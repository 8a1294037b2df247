"""What the master must not lose, written through the Store; and resuming from it on start."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from shardmill.data.plan import provenance_of
from shardmill.debug import bundle
from shardmill.master.blobfiles import ShardRow
from shardmill.master.brain import events as ev
from shardmill.master.brain.archive import JobSummary
from shardmill.master.brain.attempt import Attempt
from shardmill.master.brain.model import Shard
from shardmill.master.brain.transitions import JobState, ShardState
from shardmill.master.jobs import JobData
from shardmill.master.merge import FinalResult, MapMerger, OpMerger
from shardmill.master.records import StoredJob, pack_blob, unpack_blob, unpack_inputs
from shardmill.master.store import Store
from shardmill.ops import MAP_OP, get_op
from shardmill.ops.registry import Registry
from shardmill.wire.codec import Buffer, pack_value, to_bytes, unpack_value
from shardmill.wire.spec import Descriptor, JobSpec, MapChunk

log = logging.getLogger(__name__)
GROUP_COMMIT = 0.05  # seconds: merges are committed in groups at most this far apart


class Checkpointer:
    """Writes jobs, merged shards, partials and results; a no-op without a state dir."""

    def __init__(self, state_dir: Path | None) -> None:
        self.store = Store(state_dir) if state_dir is not None else None
        # Merges since the last commit, kept in memory and written in one batch just before
        # it: the shards (with a map shard's result, still unpacked) and each op job's merger,
        # whose partial is packed once per commit rather than once per merge. A job that ends
        # before its merges were written never writes them: its end writes the whole job.
        self._merged: list[_Merged] = []
        self._rows_written: set[str] = set()  # unfinished jobs with shard rows on disk
        self._partials: dict[str, OpMerger] = {}
        self._flush_at: float | None = None

    def job_added(self, job_id: str, data: JobData, *, spec: JobSpec, submitted_at: float) -> None:
        """Durable before the client hears "submitted"."""
        if self.store is None:
            return
        if isinstance(data.merger, MapMerger):
            # A map job's descriptors follow from its function and part counts: not stored
            # (restore builds them again, see _descriptors).
            counts, descriptors = data.merger.counts, []
        else:
            counts, descriptors = [], data.descriptors
        self.store.add_job(job_id, spec, descriptors, counts, submitted_at, data.inputs)
        self.store.commit()

    def job_started(self, job_id: str, started_at: float) -> None:
        """Its first shard went out (wall clock): written with the next group commit."""
        if self.store is not None:
            self.store.job_started(job_id, started_at)
            self._flush_at = self._flush_at or time.monotonic() + GROUP_COMMIT

    def attempts_given(self, job_id: str, high: int) -> None:
        """Attempt `high` of the job goes out next, its highest yet: committed before it goes,
        with whatever else is written (once per job for most: attempt 1 at its start)."""
        if self.store is not None:
            self.store.attempts_given(job_id, high)
            self.store.commit()

    def dropped(self, job_id: str, shards: Sequence[Shard], *, resent: int, offset: float) -> None:
        """A result dropped: the stories of merged shards that gained a duplicate attempt, and
        the job's count of resent copies, with the next group commit."""
        if self.store is None:
            return
        rows = [(_JSON(_attempts(s.history, offset)), job_id, s.index) for s in shards]
        self.store.dropped(job_id, rows, resent=resent)
        self._flush_at = self._flush_at or time.monotonic() + GROUP_COMMIT

    def unmerged(self, job_id: str, shard: Shard, *, offset: float) -> None:
        """An attempt of a shard not merged ended: its story in a row of state "queued" (a
        restart runs it again, story and all; its merge replaces the row), with the next
        group commit."""
        if self.store is not None:
            history = _JSON(_attempts(shard.history, offset))
            self.store.shards_settled([(job_id, shard.index, "queued", history, None)])
            self._flush_at = self._flush_at or time.monotonic() + GROUP_COMMIT

    def shard_merged(
        self,
        job_id: str,
        shard: Shard,
        data: JobData,
        result: tuple[bytes, Sequence[Buffer]],
        *,
        offset: float,
    ) -> None:
        """The shard's row and the partial it went into, in the same (grouped) transaction."""
        if self.store is None:
            return
        merger = data.merger
        kept = result if isinstance(merger, MapMerger) else None
        self._merged.append(_Merged(job_id, shard, kept, offset))
        if isinstance(merger, OpMerger):
            self._partials[job_id] = merger
        if self._flush_at is None:
            self._flush_at = time.monotonic() + GROUP_COMMIT

    def job_ended(
        self,
        job_id: str,
        shards: Sequence[Shard],
        *,
        state: str,
        error: str | None,
        finished_at: float,
        result: FinalResult | None,
        offset: float,
        map_job: bool = False,
        summary: JobSummary | None = None,
    ) -> None:
        """Final states, every shard's story, the result and the job's summary (all a restart
        reads of it); committed before anyone is told."""
        if self.store is None:
            return
        self._partials.pop(job_id, None)  # the job's end deletes its partial
        # A map job whose results are partly on disk in its shard rows keeps them there, and
        # its other results join them: its result is never written twice. Any other job's
        # result is written whole, and the merges it did not write yet never will be.
        keep_rows = map_job and result is not None and job_id in self._rows_written
        if not keep_rows:
            self._merged = [m for m in self._merged if m.job_id != job_id]
        self._write_merges()  # and other jobs', so that this commit covers them too
        self._rows_written.discard(job_id)
        self.store.job_ended(
            job_id,
            state=state,
            error=error,
            finished_at=finished_at,
            result=None if result is None or keep_rows else _result_blob(result),
            settled=_settled_blob(shards, offset),
            keep_shard_rows=keep_rows,
            summary=None if summary is None else bytes(msgpack.packb(summary.pack())),
        )
        self.store.commit()

    def forget(self, job_ids: Sequence[str]) -> None:
        if self.store is not None and job_ids:
            self.store.delete_jobs(job_ids)
            self.store.commit()
            bundle.remove(self.store.dir, job_ids)

    def attempt_failed(self, e: ev.ShardFailed, data: JobData, spec: JobSpec, cap: int) -> None:
        """The failed attempt's replay bundle, from the task as it was sent and the failure
        as reported; best effort: a bundle that cannot be written is logged, not fatal."""
        if self.store is None or cap <= 0 or e.error.kind not in bundle.REPLAYABLE:
            return
        header, arrays = data.task(
            e.job_id, e.shard, e.attempt, op=spec.op, timeout=spec.task_timeout
        )
        found = bundle.Bundle(
            job_id=e.job_id,
            shard=e.shard,
            attempt=e.attempt,
            worker=e.worker,
            function=spec.function if spec.op == MAP_OP and spec.function else spec.op,
            spec=spec.model_dump(mode="json"),
            task=header,
            arrays=[to_bytes(a) for a in arrays],
            error=e.error,
        )
        try:
            bundle.write(self.store.dir, bundle.trimmed(found, cap))
        except OSError as err:
            log.warning("replay bundle of %s/%d not written: %s", e.job_id, e.shard, err)

    def commit(self, now: float = float("inf")) -> None:
        """Group commit: merges since the last commit are written and become durable together,
        at most every GROUP_COMMIT seconds. Nothing waits on them: no client is told of a
        merge, and a merge lost in a crash is re-delivered from the workers' resend buffers or
        re-run. Job ends commit at once (job_ended), and so does the loop before it answers a
        client who may hear of merges (commit() with no time): what a client saw merged stays
        merged."""
        if self.store is not None and self._flush_at is not None and now >= self._flush_at:
            self._write_merges()
            self.store.commit()

    def flush_deadline(self) -> float | None:
        """When the loop must wake up to commit pending merges."""
        return self._flush_at

    def check(self) -> None:
        """Raise the StateDirError of a write that failed, if one did: the loop stops on it."""
        if self.store is not None and self.store.failure is not None:
            raise self.store.failure

    def close(self) -> None:
        if self.store is None:
            return
        try:
            if self.store.failure is None:
                self._write_merges()
        finally:
            self.store.close()

    def _write_merges(self) -> None:
        """Merged shards' rows and their jobs' partials, in the open transaction."""
        assert self.store is not None
        if self._merged:
            self.store.shards_settled([m.row() for m in self._merged])
            self._rows_written.update(m.job_id for m in self._merged)
            self._merged = []
        for job_id, merger in self._partials.items():
            packed = pack_value(merger.acc)
            blob = pack_blob(packed.data, packed.arrays)
            self.store.save_partial(job_id, blob, len(merger.shards_merged))
        self._partials = {}
        self._flush_at = None

    # ---- resume --------------------------------------------------------------------------------

    def restore(self, registry: Registry) -> tuple[dict[str, JobData], list[ev.Event]]:
        """Every unfinished job: the loop's data for it (descriptors, merger, inputs), and the
        event that rebuilds it in the brain; then finished jobs' summaries, in one event.
        User ops resolve among `registry`'s modules."""
        jobs: dict[str, JobData] = {}
        events: list[ev.Event] = []
        if self.store is None:
            return jobs, events
        starts = self.store.master_started(time.time())
        for stored in self.store.load():
            jobs[stored.job_id] = _job_data(stored, registry)
            restarts = tuple(t for t in starts if stored.submitted_at < t)
            events.append(_restored(stored, len(jobs[stored.job_id].descriptors), restarts))
            if stored.shards:
                self._rows_written.add(stored.job_id)
        events.append(ev.SummariesRestored(tuple(self.store.summaries())))
        return jobs, events

    def load_finished(self, job_id: str, registry: Registry) -> tuple[StoredJob, JobData] | None:
        """A finished job read back from the state dir (its stories, its result), or None."""
        stored = None if self.store is None else self.store.load_job(job_id)
        if stored is None or stored.state == "running":
            return None
        return stored, _job_data(stored, registry)


def _restored(stored: StoredJob, shards: int, restarts: tuple[float, ...]) -> ev.JobRestored:
    settled = {i: (ShardState(s.state), tuple(s.history)) for i, s in stored.shards.items()}
    return ev.JobRestored(
        stored.job_id,
        stored.spec,
        shards,
        submitted_at=stored.submitted_at,
        state=JobState(stored.state),
        settled=settled,
        error=stored.error,
        finished_at=stored.finished_at,
        started_at=stored.started_at,
        restarts=restarts,
        attempts_given=stored.attempts_given,
        resent=stored.resent,
    )


def _descriptors(stored: StoredJob) -> list[Descriptor]:
    """A job's shard descriptors; a map job's are rebuilt as jobs.accept built them."""
    if stored.spec.op == MAP_OP and not stored.descriptors and stored.spec.function:
        return [MapChunk(function=stored.spec.function, count=c) for c in stored.part_counts]
    return list(stored.descriptors)


def _job_data(stored: StoredJob, registry: Registry) -> JobData:
    descriptors = _descriptors(stored)
    if stored.spec.op == MAP_OP:
        merger: MapMerger | OpMerger = MapMerger(list(stored.part_counts))
        for i, shard in stored.shards.items():
            if shard.state == "done" and shard.result is not None:
                merger.add(i, *unpack_blob(shard.result))
    else:
        provenance = provenance_of(stored.spec, descriptors)
        merger = OpMerger(get_op(stored.spec.op, registry), provenance=provenance)
        merger.shards_merged = [i for i, s in stored.shards.items() if s.state == "done"]
        if stored.partial is not None:
            merger.acc = unpack_value(*unpack_blob(stored.partial))
    data = JobData(descriptors=descriptors, merger=merger)
    data.inputs = unpack_inputs(stored.inputs)
    if stored.result is not None:
        parts, part_arrays, arrays = msgpack.unpackb(stored.result)
        data.result = FinalResult(list(parts), list(part_arrays), list(arrays))
    elif stored.state == "done" and isinstance(merger, MapMerger):
        missing = tuple(i for i, s in stored.shards.items() if s.state == "failed")
        data.result = merger.final(missing)
    return data


_JSON = json.JSONEncoder(separators=(",", ":")).encode


@dataclass
class _Merged:
    """A merged shard whose row is not written yet."""

    job_id: str
    shard: Shard  # its story is read at the commit (`dropped` writes what it gains after)
    result: tuple[bytes, Sequence[Buffer]] | None  # a map shard's; an op's went into a partial
    offset: float

    def row(self) -> ShardRow:
        history = _JSON(_attempts(self.shard.history, self.offset))
        blob = None if self.result is None else pack_blob(*self.result)
        return (self.job_id, self.shard.index, "done", history, blob)


def _attempts(history: Sequence[Attempt], offset: float) -> list[dict[str, Any]]:
    """AttemptInfo.model_dump(mode="json") of each attempt, without building the models: this
    runs for every shard, and the models were most of a small map job's checkpoint cost."""
    return [
        {
            "attempt": a.number,
            "worker": a.worker,
            "started": a.started + offset,
            "ended": None if a.ended is None else a.ended + offset,
            "outcome": a.outcome,
            "error": None if a.error is None else a.error.model_dump(mode="json"),
            "ran": a.ran,
            "backup": a.backup,
            "output": a.output,
        }
        for a in history
    ]


def _settled_blob(shards: Sequence[Shard], offset: float) -> bytes:
    """Every shard's state and story in the layout Store.job_ended describes: one msgpack call
    for the whole job, three times cheaper than JSON and far cheaper than a row per shard."""
    return bytes(
        msgpack.packb(
            [
                [
                    s.index,
                    str(s.state),
                    [
                        [
                            a.number,
                            a.worker,
                            a.started + offset,
                            None if a.ended is None else a.ended + offset,
                            a.outcome,
                            None if a.error is None else a.error.model_dump(mode="json"),
                            a.ran,
                            a.backup,
                            a.output,
                        ]
                        for a in s.history
                    ],
                ]
                for s in shards
            ]
        )
    )


def _result_blob(result: FinalResult) -> bytes:
    arrays = [to_bytes(a) for a in result.arrays]
    return bytes(msgpack.packb([result.parts, result.part_arrays, arrays]))
