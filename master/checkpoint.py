"""What the master must not lose, written through the Store; and resuming from it on start."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import msgpack

from shardmill.codec import Buffer, pack_value, to_bytes, unpack_value
from shardmill.master.jobs import JobData
from shardmill.master.merge import FinalResult, MapMerger, OpMerger
from shardmill.master.model import JobState, Shard, ShardState
from shardmill.master.state import MasterState
from shardmill.master.store import Store, StoredJob, pack_blob, unpack_blob
from shardmill.ops import MAP_OP, get_op
from shardmill.plan import provenance_of
from shardmill.protocol import JobSpec

log = logging.getLogger(__name__)
GROUP_COMMIT = 0.05  # seconds: merges are committed in groups at most this far apart


class Checkpointer:
    """Writes jobs, merged shards, partials and results; a no-op without a state dir."""

    def __init__(self, state_dir: Path | None) -> None:
        self.store = Store(state_dir) if state_dir is not None else None
        self._dirty = False
        self._flush_at = 0.0

    def job_added(self, job_id: str, data: JobData, *, spec: JobSpec, submitted_at: float) -> None:
        """Durable before the client hears "submitted"."""
        if self.store is None:
            return
        counts = data.merger.counts if isinstance(data.merger, MapMerger) else []
        self.store.add_job(job_id, spec, data.descriptors, counts, submitted_at, data.inputs)
        self.store.commit()

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
        history = [a.info(offset) for a in shard.history]
        merger = data.merger
        if isinstance(merger, MapMerger):
            self.store.shard_settled(job_id, shard.index, "done", history, pack_blob(*result))
        else:
            self.store.shard_settled(job_id, shard.index, "done", history)
            packed = pack_value(merger.acc)
            self.store.save_partial(
                job_id, pack_blob(packed.data, packed.arrays), len(merger.shards_merged)
            )
        if not self._dirty:
            self._flush_at = time.monotonic() + GROUP_COMMIT
        self._dirty = True

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
    ) -> None:
        """Final states, every shard's story and the result; committed before anyone is told."""
        if self.store is None:
            return
        for shard in shards:  # merged shards were written, with their story, when they merged
            if shard.state is not ShardState.DONE:
                history = [a.info(offset) for a in shard.history]
                self.store.shard_settled(job_id, shard.index, str(shard.state), history)
        # A map job's result is its shards' results in order, already on disk: keep those
        # rather than write everything a second time. An op's result is one small value.
        blob = None if result is None or map_job else _result_blob(result)
        self.store.job_ended(
            job_id,
            state,
            error,
            finished_at,
            blob,
            keep_shard_results=map_job and result is not None,
        )
        self.store.commit()
        self._dirty = False

    def forget(self, job_ids: Sequence[str]) -> None:
        if self.store is not None and job_ids:
            self.store.delete_jobs(job_ids)
            self.store.commit()

    def commit(self, now: float = float("inf")) -> None:
        """Group commit: merges written since the last commit become durable together, at most
        every GROUP_COMMIT seconds. Nothing waits on them: no client is told of a merge, and a
        merge lost in a crash is re-delivered from the workers' resend buffers or re-run. Job
        ends commit at once (job_ended), and so does everything before a client is answered
        (commit() with no time), so whatever a client saw merged stays merged."""
        if self.store is not None and self._dirty and now >= self._flush_at:
            self.store.commit()
            self._dirty = False

    def flush_deadline(self) -> float | None:
        """When the loop must wake up to commit pending merges."""
        return self._flush_at if self._dirty else None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    # ---- resume --------------------------------------------------------------------------------

    def restore(self, state: MasterState, now: float) -> dict[str, JobData]:
        """Load every stored job into the state machine; returns the loop's per-job data."""
        jobs: dict[str, JobData] = {}
        if self.store is None:
            return jobs
        unfinished = 0
        for stored in self.store.load():
            jobs[stored.job_id] = _job_data(stored)
            settled = {i: ShardState(s.state) for i, s in stored.shards.items()}
            state.restore_job(
                stored.job_id,
                stored.spec,
                settled,
                shards=len(stored.descriptors),
                submitted_at=stored.submitted_at - state.wall_offset,
                state=JobState(stored.state),
                error=stored.error,
                finished_at=None
                if stored.finished_at is None
                else stored.finished_at - state.wall_offset,
            )
            _restore_histories(state, stored)
            unfinished += stored.state == "running"
        if unfinished:
            # Workers still running shards re-register with them: give them time to come back
            # before the queue is handed out again, so those shards are not run twice.
            state.hold_until = now + state.timing.expiry
            log.info("resuming %d unfinished job(s) of %d", unfinished, len(jobs))
        return jobs


def _job_data(stored: StoredJob) -> JobData:
    if stored.spec.op == MAP_OP:
        merger: MapMerger | OpMerger = MapMerger(list(stored.part_counts))
        for i, shard in stored.shards.items():
            if shard.state == "done" and shard.result is not None:
                merger.add(i, *unpack_blob(shard.result))
    else:
        provenance = provenance_of(stored.spec, list(stored.descriptors))
        merger = OpMerger(get_op(stored.spec.op), provenance=provenance)
        merger.shards_merged = [i for i, s in stored.shards.items() if s.state == "done"]
        if stored.partial is not None:
            merger.acc = unpack_value(*unpack_blob(stored.partial))
    data = JobData(descriptors=list(stored.descriptors), merger=merger)
    data.inputs = [unpack_blob(b) for b in stored.inputs]
    if stored.result is not None:
        parts, part_arrays, arrays = msgpack.unpackb(stored.result)
        data.result = FinalResult(list(parts), list(part_arrays), list(arrays))
    elif stored.state == "done" and isinstance(merger, MapMerger):
        missing = tuple(i for i, s in stored.shards.items() if s.state == "failed")
        data.result = merger.final(missing)
    return data


def _restore_histories(state: MasterState, stored: StoredJob) -> None:
    from shardmill.master.model import Attempt

    job = state.jobs[stored.job_id]
    for i, s in stored.shards.items():
        job.shards[i].history = [
            Attempt(
                number=a.attempt,
                worker=a.worker,
                started=a.started - state.wall_offset,
                ended=None if a.ended is None else a.ended - state.wall_offset,
                outcome=a.outcome,
                error=a.error,
            )
            for a in s.history
        ]


def _result_blob(result: FinalResult) -> bytes:
    arrays = [to_bytes(a) for a in result.arrays]
    return bytes(msgpack.packb([result.parts, result.part_arrays, arrays]))
