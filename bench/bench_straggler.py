"""One worker 10 times slower than the others: the job's time with it and without it.

8 workers x 1 slot (the tasks sleep, so 2 cores carry them), 80 shards of 0.2-0.3 s: a worker
named in a file sleeps 10 times as long. Pull-based dispatch already gives the slow worker fewer
shards; the tail is its last shard, which a speculative backup on an idle worker overtakes.
Run with speculation on (the default) and off, beside the time with no slow worker.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench_context import Bench
from bench_harness import SHARDMILL, Metric, Target, new_cluster

WORKERS, SHARDS, SECONDS = 8, 80, 0.25


def straggler(b: Bench) -> list[Metric]:
    runs: dict[str, list[float]] = {"clean": [], "slow": [], "slow, no speculation": []}
    with tempfile.TemporaryDirectory() as tmp, new_cluster() as cluster:
        slow_file = Path(tmp) / "slow"
        for _ in range(WORKERS - 2):
            cluster.add_worker()
        cluster.wait_for_workers(WORKERS)
        with cluster.client() as client:
            slow = client.workers()[0].worker_id
            # 0.2-0.3 s, spread by index: workers drift apart, as real shards make them
            args = [
                (i, SECONDS * (0.8 + 0.04 * (i * 7 % 11)), str(slow_file)) for i in range(SHARDS)
            ]

            def once(who: str, **spec: object) -> float:
                slow_file.write_text(who)
                job = client.map("bench_tasks:nap_or_crawl", args, chunk_size=1, **spec)  # type: ignore[arg-type]
                t0 = time.perf_counter()
                if job.result(timeout=600) != list(range(SHARDS)):
                    raise RuntimeError("straggler: wrong results")
                return time.perf_counter() - t0

            once("")  # warm-up: every child has imported the task module
            for _ in range(b.heavy_reps):
                b.settle()
                runs["clean"].append(once(""))
                runs["slow"].append(once(slow))
                runs["slow, no speculation"].append(once(slow, speculate_after=0))
    label = f"{SHARDS} shards of ~{SECONDS} s on {WORKERS} workers"
    clean = Metric("straggler-clean", f"straggler: {label}, no slow worker", "s", False)
    with_slow = Metric(
        "straggler-slow",
        f"straggler: {label}, one worker 10x slower",
        "s",
        False,
        target=Target("<=", 1.3, relative_to="straggler-clean"),
    )
    without = Metric(
        "straggler-nospec", "straggler: the same, speculation off (speculate_after=0)", "s", False
    )
    clean.add(SHARDMILL, runs["clean"])
    with_slow.add(SHARDMILL, runs["slow"])
    without.add(SHARDMILL, runs["slow, no speculation"])
    with_slow.note = "Dask and Ray: not run (no way here to slow one of their workers alike)"
    return [clean, with_slow, without]
