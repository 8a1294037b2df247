"""The first job a newcomer runs: W1 one task per message (10,000 no-ops, `chunk_size=1`) as
the first map of a fresh cluster, side by side with the maps after it on the same cluster.

`python bench/bench_first.py [--clusters 3] [--warm 3] [--tasks 10000]` starts a fresh
`LocalCluster` (2 workers, 1 slot each, as every workload) per round, times its first map and
then `--warm` more, and prints each round and the medians (first, warm, first / warm) as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass

from bench_harness import new_cluster, prepare_environment
from bench_systems import ShardmillSystem
from bench_workloads import _map_rate


@dataclass
class Round:
    """One fresh cluster: seconds to start it, tasks/s of its first map and of the maps after."""

    ready_s: float
    rtt_known: int  # workers whose round trip the master had measured when the first map began
    first: float
    warm: list[float]


def one_cluster(tasks: int, warm: int) -> Round:
    t0 = time.perf_counter()
    cluster = new_cluster().start()
    system = ShardmillSystem(cluster)
    ready = time.perf_counter() - t0
    try:
        known = sum(w.rtt is not None for w in system.client.workers())
        first = _map_rate(system, tasks, each=True)
        rates = []
        for _ in range(warm):
            system.forget_jobs()
            rates.append(_map_rate(system, tasks, each=True))
    finally:
        system.close()
    return Round(ready, known, first, rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clusters", type=int, default=3, help="fresh clusters (rounds)")
    parser.add_argument("--warm", type=int, default=3, help="maps after the first, per cluster")
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    prepare_environment()
    rounds = []
    for _ in range(args.clusters):
        rounds.append(one_cluster(args.tasks, args.warm))
        r = rounds[-1]
        then = " ".join(f"{w:,.0f}" for w in r.warm)
        print(f"ready {r.ready_s:.2f} s, rtt known {r.rtt_known}, first {r.first:,.0f}/s, {then}")
    first = statistics.median(r.first for r in rounds)
    warm = statistics.median(w for r in rounds for w in r.warm)
    summary = {"first": round(first), "warm": round(warm), "first/warm": round(first / warm, 2)}
    print(
        json.dumps({"tasks": args.tasks, "median": summary, "rounds": [asdict(r) for r in rounds]})
    )


if __name__ == "__main__":
    main()
