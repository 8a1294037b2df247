"""What-if experiments: estimate what a proposed runtime fix would gain, without making it.

    python bench/whatif.py EXPERIMENT [--rev REV] [--reps N]

jobs      W2 latency as finished jobs pile up on the master, then after `client.prune()`
prefetch  2,048-shard column_stats and W4 with 1 slot per worker vs 2 (a second task in flight
          per worker, as a prefetch credit would give)
shm       W4's bytes written to a temporary .npy and sent by reference instead
plaintext W4 and W2 with CURVE (the default) and with LocalCluster(insecure=True)
start     LocalCluster.start() vs the master and workers launched at the same time
respawn   a fresh child process: spawn to first answered task (what W5 loses per killed child)
spin      W2 with idle CPUs vs with lowest-priority busy loops (the VM's idle wake-up cost)
codec     in-process cost of one call's messages and state-machine steps (no sockets)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from bench_data import ensure_dataset
from bench_harness import (
    FULL,
    JOB_TIMEOUT,
    WORKERS,
    new_cluster,
    prepare_environment,
    timed,
)
from bench_runtime import REV_ENV, rerun_at
from bench_systems import ShardmillSystem

from shardmill.master.brain import events as ev
from shardmill.master.brain.state import MasterState
from shardmill.wire.codec import decode, encode, pack_value
from shardmill.wire.protocol import ShardDone, Submit, Task
from shardmill.wire.spec import JobSpec, MapChunk
from shardmill.worker.pipes import read_frames, write_frames


def _median_ms(fn: Callable[[], object], n: int) -> float:
    return statistics.median(timed(fn) for _ in range(n)) * 1000


def jobs(reps: int) -> None:
    system = ShardmillSystem(new_cluster().start())
    try:
        system.call_noop()
        for _ in range(4):
            held = len(system.client.jobs())
            print(f"{held:5d} jobs held: W2 median {_median_ms(system.call_noop, 200):.3f} ms")
            for _ in range(800):
                system.call_noop()
        system.client.prune(0)
        held = len(system.client.jobs())
        print(f"{held:5d} jobs held after prune: {_median_ms(system.call_noop, 200):.3f} ms")
    finally:
        system.close()


def prefetch(reps: int) -> None:
    ds, _ = ensure_dataset(FULL.rows, FULL.cols)
    data = np.load(ds.path)
    blocks = [data[a:b] for a, b in ds.ranges(FULL.shards)]
    for slots in (1, 2):
        system = ShardmillSystem(new_cluster(slots=slots).start())
        try:
            curve, w4 = _prefetch_runs(system, str(ds.path), ds.ranges(2048), blocks, reps)
        finally:
            system.close()
        print(f"{WORKERS} workers x {slots} slots: 2,048 shards {curve:.3f} s, W4 {w4:.2f} GB/s")


def _prefetch_runs(
    system: ShardmillSystem,
    path: str,
    ranges: list[tuple[int, int]],
    blocks: list[np.ndarray],
    reps: int,
) -> tuple[float, float]:
    nbytes = sum(b.nbytes for b in blocks)
    curve, w4 = [], []
    for _ in range(reps + 1):  # the first is a warm-up
        curve.append(timed(lambda: system.stats_by_reference(path, ranges)))
        w4.append(nbytes / 1e9 / timed(lambda: system.stats_by_value(blocks)))
    return statistics.median(curve[1:]), statistics.median(w4[1:])


def shm(reps: int) -> None:
    ds, _ = ensure_dataset(FULL.rows, FULL.cols)
    data = np.load(ds.path)
    # The master takes datasets under its cwd or temp dir: make the temp dir RAM-backed.
    os.environ["TMPDIR"] = "/dev/shm"
    tempfile.tempdir = None
    system = ShardmillSystem(new_cluster().start())
    try:
        for _ in range(reps + 1):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "blocks.npy"
                t0 = time.perf_counter()
                np.save(path, data)
                written = time.perf_counter() - t0
                system.stats_by_reference(str(path), ds.ranges(FULL.shards))
                total = time.perf_counter() - t0
            print(
                f"write to {tmp} {written:.3f} s + by reference {total - written:.3f} s = "
                f"{data.nbytes / 1e9 / total:.2f} GB/s"
            )
    finally:
        system.close()


def plaintext(reps: int) -> None:
    ds, _ = ensure_dataset(FULL.rows, FULL.cols)
    data = np.load(ds.path)
    ranges = ds.ranges(FULL.shards)
    blocks = [data[a:b] for a, b in ranges]
    for label, extra in (("CURVE (default)", {}), ("insecure=True", {"insecure": True})):
        system = ShardmillSystem(new_cluster(**extra).start())
        try:
            seconds = [timed(partial(system.stats_by_value, blocks)) for _ in range(reps + 1)]
            lat = _median_ms(system.call_noop, 400)
        finally:
            system.close()
        gbs = data.nbytes / 1e9 / statistics.median(seconds[1:])
        print(f"{label}: W4 (map) {gbs:.2f} GB/s, W2 {lat:.3f} ms")


def start(reps: int) -> None:
    for _ in range(reps):
        cluster = new_cluster()
        seq = timed(cluster.start)
        cluster.stop()
        print(f"LocalCluster.start(): {seq:.3f} s; all at once: {_start_at_once():.3f} s")


def _start_at_once() -> float:
    """Master and workers launched together on ports picked ahead; workers retry connecting."""
    cluster = new_cluster()  # for its environment and, where the runtime has them, its keys
    ports = [_free_port(), _free_port()]
    keys = getattr(cluster, "keys_dir", None)
    security = (
        ["--keys", keys] if keys else ["--insecure"] if getattr(cluster, "insecure", 0) else []
    )
    master = ["--port", str(ports[0]), "--client-port", str(ports[1]), *security]
    worker = ["--master", f"tcp://127.0.0.1:{ports[0]}", "--slots", "1", *security]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "shardmill.master", *master],
            stdout=subprocess.DEVNULL,
            env=cluster.env,
        )
    ]
    procs += [
        subprocess.Popen([sys.executable, "-m", "shardmill.worker", *worker], env=cluster.env)
        for _ in range(WORKERS)
    ]
    cluster.client_address = f"tcp://127.0.0.1:{ports[1]}"
    try:
        with cluster.client(connect_timeout=30) as client:
            while len(client.workers()) < WORKERS:
                time.sleep(0.01)
            return time.perf_counter() - t0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def respawn(reps: int) -> None:
    task = Task(
        job_id="whatif",
        shard=0,
        attempt=1,
        op="map",
        descriptor=MapChunk(function="bench_tasks:noop1", count=1),
        payload=pack_value([[1]]).data,
    )
    env = new_cluster().env
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "shardmill.worker.executor", "whatif", "bench_tasks"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdin is not None and child.stdout is not None
        write_frames(child.stdin, encode(task))  # type: ignore[arg-type]
        read_frames(child.stdout)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t0)
        child.stdin.close()
        child.wait(timeout=JOB_TIMEOUT)
    print(f"child spawn -> first task answered: median {statistics.median(times[1:]):.3f} s")


def spin(reps: int) -> None:
    system = ShardmillSystem(new_cluster().start())
    try:
        system.call_noop()
        idle = _median_ms(system.call_noop, 400 * reps)
        # Busy loops at the lowest priority keep the vCPUs out of idle without taking them.
        loops = [
            subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 1)
        ]
        try:
            busy = _median_ms(system.call_noop, 400 * reps)
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()
    finally:
        system.close()
    print(f"W2 with idle CPUs {idle:.3f} ms; with nice-19 busy loops on every CPU {busy:.3f} ms")


def codec(reps: int) -> None:
    """In-process cost of the messages and state-machine steps of one call (no sockets)."""
    spec = JobSpec(op="map", function="bench_tasks:noop")
    payload = pack_value([[]]).data
    submit = Submit(spec=spec, parts=[payload], part_counts=[1], part_arrays=[0])
    task = Task(
        job_id="j",
        shard=0,
        attempt=1,
        op="map",
        descriptor=MapChunk(function="bench_tasks:noop", count=1),
        payload=payload,
    )
    done = ShardDone(job_id="j", shard=0, attempt=1, payload=pack_value([None]).data)
    steps: dict[str, Callable[[], object]] = {
        "client: spec + Submit + encode": lambda: encode(
            Submit(spec=JobSpec(op="map", function="bench_tasks:noop"), parts=[payload])
        ),
        "decode Submit": partial(decode, encode(submit)),
        "encode Task": partial(encode, task),
        "decode Task": partial(decode, encode(task)),
        "encode ShardDone": partial(encode, done),
        "decode ShardDone": partial(decode, encode(done)),
        "state machine: job added, shard done, job_info": _state_cycle(spec),
    }
    total = 0.0
    for name, fn in steps.items():
        us = min(timeit.repeat(fn, number=2000, repeat=3)) / 2000 * 1e6
        total += us
        print(f"{us:8.1f} us  {name}")
    print(f"{total:8.1f} us  total")


def _state_cycle(spec: JobSpec) -> Callable[[], object]:
    state = MasterState()
    state.handle(ev.WorkerReady("w", 1, ()), 0.0)
    ids = itertools.count()

    def cycle() -> object:
        job = f"j{next(ids)}"
        state.handle(ev.JobAdded(job, spec, 1), 1.0)
        state.handle(ev.ShardSucceeded("w", job, 0, 1, 0.0), 1.0)
        return state.job_info(job)

    return cycle


EXPERIMENTS: dict[str, Callable[[int], None]] = {
    "jobs": jobs,
    "prefetch": prefetch,
    "shm": shm,
    "start": start,
    "plaintext": plaintext,
    "spin": spin,
    "codec": codec,
    "respawn": respawn,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("experiment", choices=list(EXPERIMENTS))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rev", default="", help="run against this git revision of the runtime")
    args = p.parse_args()
    if args.rev and REV_ENV not in os.environ:
        rerun_at(args.rev, __file__, sys.argv[1:])
    prepare_environment()
    print(json.dumps({"experiment": args.experiment, "runtime": os.environ.get(REV_ENV, "tree")}))
    EXPERIMENTS[args.experiment](args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
