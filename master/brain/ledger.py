"""Jobs looked up whole or archived, and finished jobs archived or pruned: the half of the
brain that knows a finished job may be a summary only (archive.py)."""

from __future__ import annotations

from shardmill.master.brain import events as ev
from shardmill.master.brain.admission import archive_job, prune
from shardmill.master.brain.archive import Archive
from shardmill.master.brain.model import Job, Limits
from shardmill.wire.protocol import JobInfo


class Ledger:
    """Every job this master knows: `jobs` whole, `archive` summaries."""

    jobs: dict[str, Job]
    archive: Archive
    limits: Limits
    wall_offset: float
    _out: list[ev.Command]
    _now: float

    def job_info(self, job_id: str, *, shards: bool = False) -> JobInfo:
        """As users read it; an archived job's without its shards (master/history.py reads
        them from the state dir)."""
        job = self.jobs.get(job_id)
        if job is None:
            return self.archive.summaries[job_id].info()
        return job.info(offset=self.wall_offset, shards=shards)

    def known(self, job_id: str) -> bool:
        """Whether the job is here, whole or as a summary."""
        return job_id in self.jobs or job_id in self.archive

    def owner_of(self, job_id: str) -> str:
        job = self.jobs.get(job_id)
        return job.owner if job is not None else self.archive.summaries[job_id].owner

    def _on_prune(self, e: ev.PruneRequested) -> None:
        cutoff = self._now - (e.older_than or 0.0)
        infos = prune(self.jobs, self.archive, cutoff, offset=self.wall_offset, keep=e.keep)
        self._out.append(ev.Pruned(tuple(infos)))

    def _on_archived(self, e: ev.JobArchived) -> None:
        gone = archive_job(self.jobs, self.archive, e, self.limits, offset=self.wall_offset)
        if gone:
            self._out.append(ev.Forgotten(gone))
