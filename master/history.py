"""Finished jobs' details, read from the state dir when someone asks (`why`, `status --shards`,
report, trace, dashboard, a late `result`): in memory a finished job is its summary only
(master/brain/archive.py)."""

from __future__ import annotations

from shardmill.master.brain.attempt import as_read
from shardmill.master.brain.failures import telling_error
from shardmill.master.core import Core
from shardmill.master.merge import FinalResult
from shardmill.wire.protocol import ErrorInfo, JobInfo, ShardInfo


class History:
    """Answers about jobs, whole (in the brain) or archived (read from the state dir)."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def unknown(self, job_id: str) -> str:
        """What a client asking for a job this master does not know is told."""
        text = f"no job {job_id!r} on this master; list them: shardmill jobs"
        archive, limits = self.core.brain.archive, self.core.brain.limits
        if archive.forgotten:
            text += (
                f" (without a state dir this master keeps the latest {limits.finished_kept:,} "
                f"finished jobs, {limits.finished_bytes:,} bytes of results: it forgot "
                f"{archive.forgotten:,} older ones; give it --state-dir to keep them all)"
            )
        return text

    def info(self, job_id: str, *, shards: bool) -> JobInfo:
        """A known job's info; an archived one's shards (when asked) from the state dir."""
        brain = self.core.brain
        info = brain.job_info(job_id, shards=shards)
        if shards and job_id not in brain.jobs:
            info = info.model_copy(update={"shards": self._shards(job_id)})
        return info

    def _shards(self, job_id: str) -> list[ShardInfo]:
        store = self.core.checkpoint.store
        stored = None if store is None else store.load_job(job_id)
        if stored is None:
            return []
        return [
            ShardInfo(
                index=i,
                state=s.state,
                attempts=len(s.history),
                worker=None,
                merged=int(s.state == "done"),
                history=[as_read(a) for a in s.history],
            )
            for i, s in sorted(stored.shards.items())
        ]

    def outcome(self, job_id: str) -> tuple[FinalResult | None, ErrorInfo | None]:
        """An archived job's result (done) or the error its failed shard is told by."""
        loaded = self.core.checkpoint.load_finished(job_id, self.core.registry)
        if loaded is None:
            return None, None
        stored, data = loaded
        if stored.state == "done":
            return data.result, None
        for shard in stored.shards.values():
            if shard.state == "failed" and shard.history:
                return None, telling_error(shard.history)
        return None, None
