"""Cold start, as a user's script meets it: a fresh Python process imports the system, starts
a local cluster of 2 workers and has a first map answered. Wall time from the parent's spawn
to the child's answer (interpreter start included), and the child's own split.

`python bench/bench_cold.py NAME` is one such start (NAME: shardmill, pool, dask, ray); it
prints its times as JSON. The parent (`cold_start`) runs each NAME installed here.
"""

from __future__ import annotations

import time

T0 = time.time()  # before any import of this process, but after the interpreter's start

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

TASKS = 10  # the first map: noop1 over range(10)
NAMES = ("shardmill", "pool", "dask", "ray")


def _shardmill() -> tuple[float, float, float]:
    from shardmill import LocalCluster  # the imports a user's script makes

    imported = time.time()
    from bench_harness import cluster_env

    with LocalCluster(workers=2, imports=["bench_tasks"], env=cluster_env()) as cluster:
        ready = time.time()
        with cluster.client() as client:
            got = client.map("bench_tasks:noop1", [(i,) for i in range(TASKS)]).result()
            answered = time.time()
    assert got == list(range(TASKS)), got
    return imported, ready, answered


def _pool() -> tuple[float, float, float]:
    import multiprocessing

    from bench_tasks import noop1

    imported = time.time()
    with multiprocessing.Pool(2) as pool:
        ready = time.time()
        got = pool.map(noop1, range(TASKS))
        answered = time.time()
    assert got == list(range(TASKS)), got
    return imported, ready, answered


def _dask() -> tuple[float, float, float]:
    from dask.distributed import Client, LocalCluster

    imported = time.time()
    from bench_tasks import noop1

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = Client(cluster)
    ready = time.time()
    got = client.gather(client.map(noop1, range(TASKS), pure=False))
    answered = time.time()
    client.close()
    cluster.close()
    assert got == list(range(TASKS)), got
    return imported, ready, answered


def _ray() -> tuple[float, float, float]:
    import ray

    imported = time.time()
    from bench_tasks import noop1

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ready = time.time()
    f = ray.remote(noop1)
    got = ray.get([f.remote(i) for i in range(TASKS)])
    answered = time.time()
    ray.shutdown()
    assert got == list(range(TASKS)), got
    return imported, ready, answered


def cold(name: str, env: dict[str, str]) -> dict[str, float]:
    """One cold start of `name` in a fresh process; seconds from spawn to each step."""
    spawned = time.time()
    out = subprocess.run(
        [sys.executable, str(Path(__file__)), name],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"cold start of {name} failed: {out.stderr[-500:]}")
    times: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: v - spawned for k, v in times.items()}


def main() -> int:
    runs: dict[str, Any] = {"shardmill": _shardmill, "pool": _pool, "dask": _dask, "ray": _ray}
    if len(sys.argv) != 2 or sys.argv[1] not in runs:
        print(f"usage: bench_cold.py {{{','.join(runs)}}}", file=sys.stderr)
        return 2
    imported, ready, answered = runs[sys.argv[1]]()
    print(json.dumps({"start": T0, "imported": imported, "ready": ready, "answered": answered}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
