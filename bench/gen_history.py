"""A state dir holding a week of finished jobs (issue 36), written by the master's own code.

    python bench/gen_history.py --jobs 100000 --shards 8 --days 7 STATE_DIR

Each job is what `bench_retained.py` runs for real: a map of `bench_tasks:noop1` over S
one-item shards, submitted as the client submits it (`job.chunked`), taken in as the master
takes it (`jobs.accept`), recorded by the master's `Checkpointer` (`job_added`, then
`job_ended` with every shard's story, the merged result and the job's summary), so the bytes
on disk are the ones a master writes. Only the clock is made up: jobs end evenly over the last
`--days` days (the oldest just inside the default job_retention of 7 days), each shard one
attempt of a few ms on one of 4 workers; every 10th job's shard 3 first lost its worker.
Jobs are written oldest first, committed as the master commits them; every 1,000 jobs the
Checkpointer is closed and opened again (as a master stopped and started: back to back, the
commits would leave SQLite's write-ahead log no pause to be copied back, and it would grow to
gigabytes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from shardmill.job import chunked
from shardmill.master.brain.archive import JobSummary
from shardmill.master.brain.model import Job, Shard
from shardmill.master.brain.transitions import JobState, ShardState
from shardmill.master.checkpoint import Checkpointer
from shardmill.master.jobs import accept, new_job_id
from shardmill.ops.registry import Registry
from shardmill.wire.codec import pack_value
from shardmill.wire.info import ErrorInfo
from shardmill.wire.spec import job_spec

DAY = 24 * 3600.0
WORKERS = [f"bench-worker-{i}" for i in range(4)]
LOST = ErrorInfo(kind="lost", message="worker stopped answering heartbeats", worker=WORKERS[1])
REOPEN = 1000  # jobs between closing and opening the Checkpointer
MARGIN = 3600.0  # seconds: the oldest job ends this far inside the retention


def _job(job_id: str, shards: int, submitted: float) -> tuple[Job, Any]:
    """The job as the master holds it when it ends (wall-clock times: offset 0)."""
    spec = job_spec(op="map", function="bench_tasks:noop1", name=f"history-{job_id[:4]}")
    msg, arrays = chunked(spec, [(x,) for x in range(shards)], 1)
    data = accept(msg, arrays, Registry([]))
    job = Job(job_id, msg.spec, [], submitted_at=submitted, started_at=submitted + 0.002)
    t = submitted + 0.002
    for i in range(shards):
        shard = Shard(job_id=job_id, index=i, state=ShardState.DONE, merged=1)
        if i == 3 and int(job_id, 16) % 10 == 0:  # a lost worker first: `why` has a story
            shard.start_attempt(WORKERS[1], now=t)
            job.charge(shard, LOST, t + 3.0)
            t += 3.0
        shard.start_attempt(WORKERS[i % len(WORKERS)], now=t)
        shard.close_attempt(t + 0.004, "ok", None, ran=0.003)
        t += 0.004
        job.shards.append(shard)
        job.counts[ShardState.DONE] += 1
        data.merger.add(i, pack_value([i]).data, [])
    job.state, job.finished_at = JobState.DONE, t + 0.001
    data.result = data.merger.final(())
    return job, data


def generate(state_dir: Path, n_jobs: int, shards: int, days: float) -> dict[str, Any]:
    """Write `n_jobs` finished jobs into `state_dir` (created; must hold no database yet)."""
    if (state_dir / "shardmill.db").exists():
        raise SystemExit(f"{state_dir} already holds a state database: give an empty dir")
    now = time.time()
    first = now - days * DAY + MARGIN
    step = (now - first) / n_jobs
    began = time.monotonic()
    ckpt = Checkpointer(state_dir)
    oldest = ""
    for k in range(n_jobs):
        if k and k % REOPEN == 0:
            ckpt.close()
            ckpt = Checkpointer(state_dir)
        job_id = new_job_id()
        job, data = _job(job_id, shards, first + k * step)
        oldest = oldest or job_id
        ckpt.job_added(job_id, data, spec=job.spec, submitted_at=job.submitted_at)
        ckpt.job_ended(
            job_id,
            job.shards,
            state=str(job.state),
            error=None,
            finished_at=job.finished_at or 0.0,
            result=data.result,
            offset=0.0,
            map_job=True,
            summary=JobSummary.of(job, 0.0),
        )
    ckpt.close()
    db = state_dir / "shardmill.db"
    return {
        "jobs": n_jobs,
        "shards": shards,
        "days": days,
        "oldest_job": oldest,
        "oldest_finished_days_ago": round((now - first) / DAY, 3),
        "db_bytes": db.stat().st_size,
        "seconds": round(time.monotonic() - began, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("state_dir", type=Path)
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--days", type=float, default=7.0)
    args = p.parse_args()
    print(json.dumps(generate(args.state_dir, args.jobs, args.shards, args.days)))


if __name__ == "__main__":
    main()
