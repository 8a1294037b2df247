"""joblib's small calls on 2 slots, shardmill's backend beside loky, in one run (issue 34).

N calls of a 1 ms function (`bench_tasks.wait1ms`) through `joblib.Parallel(n_jobs=2)`: on
a LocalCluster of 2 one-slot workers under `parallel_config("shardmill")`, and on joblib's
default loky backend with 2 processes. Results are checked against a serial list. The ideal
is N x 1 ms / 2 slots; the goal is within 2x of the ideal and of loky.

    python bench/bench_joblib.py --calls 10000 --json bench/results/joblib-10000.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import joblib
from bench_harness import cluster_env
from bench_tasks import wait1ms

import shardmill.joblib  # noqa: F401 (registers the backend)
from shardmill import LocalCluster


def _timed(n: int, **config: Any) -> float:
    calls = [joblib.delayed(wait1ms)(i) for i in range(n)]
    with joblib.parallel_config(**config):
        joblib.Parallel(n_jobs=2)(calls[:200])  # warm-up: processes up, batch size learnt
        start = time.perf_counter()
        out = joblib.Parallel(n_jobs=2)(calls)
        took = time.perf_counter() - start
    assert out == list(range(n)), "results differ from a serial run"
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args()
    n = args.calls
    with LocalCluster(workers=2, imports=["bench_tasks"], env=cluster_env()) as cluster:
        options = {"master": cluster.client_address, "keys": cluster.keys_dir}
        options["insecure"] = cluster.keys_dir is None
        ours = _timed(n, backend="shardmill", **options)
    loky = _timed(n, backend="loky")
    ideal = n * 0.001 / 2
    figures = {
        "calls": n,
        "ideal_s": ideal,
        "shardmill_s": round(ours, 3),
        "loky_s": round(loky, 3),
        "shardmill_over_ideal": round(ours / ideal, 2),
        "shardmill_over_loky": round(ours / loky, 2),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
