"""Master memory per retained finished job (issue 36, part 2), side by side in one run.

The same workload on a master with a state dir, run by the working tree (a finished job is a
summary in memory) and by an older revision (`--before`, imported from a `git archive`
snapshot as `run.py --rev` does: finished jobs kept whole). Each run: 2 workers, a warm-up of
50 jobs, then N map jobs of S one-item shards (results checked); the master's VmRSS is read
before and after the N jobs, all still retained. Also the time a restarted master on that
state dir takes to answer a client.

    python bench/bench_retained.py --jobs 2000 --shards 8 --before a834f6d
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_harness import cluster_env
from bench_runtime import REV_ENV, snapshot

from shardmill import LocalCluster

BATCH = 50  # jobs in flight at once


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS line in /proc/{pid}/status")


def _run_jobs(client: Any, n: int, shards: int) -> None:
    expected = list(range(shards))
    for start in range(0, n, BATCH):
        jobs = [
            client.map("bench_tasks:noop1", [(x,) for x in expected], chunk_size=1)
            for _ in range(min(BATCH, n - start))
        ]
        for job in jobs:
            assert job.result(timeout=300) == expected


def measure(n_jobs: int, shards: int) -> dict[str, Any]:
    """One master's figures, in this process's runtime (the working tree, or a snapshot)."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        with LocalCluster(
            workers=2, imports=["bench_tasks"], env=cluster_env(), state_dir=state
        ) as cluster:
            assert cluster.master is not None
            pid = cluster.master.pid
            with cluster.client() as client:
                _run_jobs(client, BATCH, shards)
                base = _rss_kib(pid)
                _run_jobs(client, n_jobs, shards)
                end = _rss_kib(pid)
                retained = len(client.jobs())
            cluster.kill_master()
            began = time.monotonic()
            cluster.start_master()
            with cluster.client() as client:
                answered = len(client.jobs())
            restart = time.monotonic() - began
    return {
        "runtime": os.environ.get(REV_ENV, "working tree"),
        "jobs": n_jobs,
        "shards": shards,
        "retained": retained,
        "rss_before_kib": base,
        "rss_after_kib": end,
        "bytes_per_job": round((end - base) * 1024 / n_jobs),
        "restart_to_answer_s": round(restart, 2),
        "answered_jobs_after_restart": answered,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--before", default="", help="also run this older revision, first")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child's run
    p.add_argument("--json", type=Path, help="write the rows here too")
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.jobs, args.shards)))
        return
    rows = []
    for rev in [args.before] * bool(args.before) + [""]:
        env = dict(os.environ)
        if rev:
            root, sha = snapshot(rev)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
            env[REV_ENV] = sha
        argv = [__file__, "--one", "--jobs", str(args.jobs), "--shards", str(args.shards)]
        out = subprocess.run([sys.executable, *argv], env=env, check=True, capture_output=True)
        rows.append(json.loads(out.stdout.decode().strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
