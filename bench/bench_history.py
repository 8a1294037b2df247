"""A master started on a week of history (issue 36): time to its first answer, RSS, `why`.

    python bench/bench_history.py --sizes 2400 100000 --json bench/results/history.json

For each size a state dir of that many finished jobs is written by `gen_history.py` (the
master's own Checkpointer; jobs ended evenly over the last 7 days), then a real master process
(CURVE keys, no workers) is started on a copy of it, `--starts` times in a row (the first
start of a newer master may do a one-time upgrade, such as making indexes). Each start is timed from
just before the process is spawned to its printed listening line, to its first answered client
call (`Client.ping()`, on a new connection) with the master's CPU seconds by then, and to the
answer of `Client.jobs()` (every retained job: what `shardmill jobs` asks), with the master's
CPU seconds for it. Then the
master's VmRSS, and `why` of shard 3 of the oldest job with a failed attempt (ended ~7 days
ago): `Client.status(job, shards=True)`, what `shardmill why` asks, `--why-calls` times
(median, p99), its story checked. Goals: first answer <= 1 s, `why` <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_harness import cluster_env
from gen_history import generate

from shardmill import LocalCluster
from shardmill.wire.protocol import JobInfo

FIRST_ANSWER_GOAL = 1.0  # seconds
WHY_GOAL = 0.050  # seconds
SHARD = 3  # the shard whose story gen_history.py makes longer in every 10th job


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise ValueError(f"no VmRSS line in /proc/{pid}/status")


def _week_old(jobs: list[JobInfo]) -> JobInfo:
    """The oldest finished job whose shard 3 lost a worker first."""
    told = [j for j in jobs if j.attempts_failed and j.finished_at is not None]
    return min(told, key=lambda j: j.finished_at or 0.0)


def _why(client: Any, job: JobInfo, calls: int) -> dict[str, Any]:
    took = []
    for _ in range(calls):
        began = time.perf_counter()
        info = client.status(job.job_id, shards=True)
        took.append(time.perf_counter() - began)
    story = info.shards[SHARD].history
    assert [a.outcome for a in story] == ["lost", "ok"], story  # the story as written
    took.sort()
    return {
        "why_job": job.job_id,
        "why_job_finished_days_ago": round((time.time() - (job.finished_at or 0)) / 86400, 2),
        "why_median_ms": round(statistics.median(took) * 1000, 2),
        "why_p99_ms": round(took[min(len(took) - 1, int(len(took) * 0.99))] * 1000, 2),
        "why_max_ms": round(took[-1] * 1000, 2),
    }


def _cpu_s(pid: int) -> float:
    """The process's user + system CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def one_start(state: Path, n_jobs: int, why_calls: int) -> dict[str, Any]:
    """Start a master on `state`, time it to its first answers, then RSS and `why`."""
    cluster = LocalCluster(workers=0, env=cluster_env(), state_dir=state, startup_timeout=120)
    began = time.monotonic()
    try:
        cluster.start()
        listening = time.monotonic() - began
        assert cluster.master is not None
        pid = cluster.master.pid
        with cluster.client(connect_timeout=60.0) as client:
            client.ping()
            row = {"listening_s": listening, "first_answer_s": time.monotonic() - began}
            row["cpu_at_first_answer_s"] = _cpu_s(pid)
            row["rss_at_first_answer_mib"] = _rss_mib(pid)
            called = time.monotonic()
            jobs = client.jobs()
            row["jobs_listed_s"] = time.monotonic() - began
            row["jobs_call_s"] = time.monotonic() - called
            row["jobs_master_cpu_s"] = _cpu_s(pid) - row["cpu_at_first_answer_s"]
            assert len(jobs) == n_jobs, (len(jobs), n_jobs)
            row = {k: round(v, 3) for k, v in row.items()}
            row["rss_after_jobs_mib"] = _rss_mib(pid)
            if why_calls:
                row.update(_why(client, _week_old(jobs), why_calls))
                row["rss_after_why_mib"] = _rss_mib(pid)
    finally:
        cluster.stop()
    return row


def measure(n_jobs: int, starts: int, why_calls: int, keep: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        made = (keep or Path(tmp)) / f"history-{n_jobs}"
        if not (made / "shardmill.db").exists():
            print(json.dumps({"generated": generate(made, n_jobs, 8, 7.0)}), flush=True)
        state = Path(tmp) / "state"
        shutil.copytree(made, state)  # as written; each start finds what the one before left
        runs = []
        for _ in range(starts):
            runs.append(one_start(state, n_jobs, why_calls))
            print(json.dumps({"jobs": n_jobs, **runs[-1]}), flush=True)
        db_mib = round((made / "shardmill.db").stat().st_size / 2**20, 1)
    first = statistics.median(r["first_answer_s"] for r in runs)
    listed = statistics.median(r["jobs_listed_s"] for r in runs)
    why = statistics.median(r["why_median_ms"] for r in runs)
    return {
        "jobs": n_jobs,
        "db_mib": db_mib,
        "first_answer_s_median": first,
        "jobs_listed_s_median": listed,
        "why_median_ms": why,
        "first_answer_met": first <= FIRST_ANSWER_GOAL,
        "jobs_listed_met": listed <= FIRST_ANSWER_GOAL,
        "why_met": max(r["why_p99_ms"] for r in runs) <= WHY_GOAL * 1000,
        "starts": runs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2400, 100_000])
    p.add_argument("--starts", type=int, default=3)
    p.add_argument("--why-calls", type=int, default=50)
    p.add_argument("--keep", type=Path, help="generate state dirs here, and reuse them")
    p.add_argument("--json", type=Path, help="write the rows here too")
    args = p.parse_args()
    # With it set (this shell does), every start would compile the master's imports from source
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        print("PYTHONDONTWRITEBYTECODE unset for the masters started", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:  # one start not measured: writes the bytecode
        one_start(Path(tmp) / "warm", 0, 0)
    rows = [measure(n, args.starts, args.why_calls, args.keep) for n in args.sizes]
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k != "starts"}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
