"""Shuffles side by side with Dask's DataFrame P2P shuffle, on the same data in the same run.

A group-by-sum of ROWS rows with KEYS keys (collected at the client) and a sort of the same
rows by key (written as partitions to disk), each on 2 workers of one process slot
(shardmill: LocalCluster(workers=2, slots=1); Dask: SubprocessCluster, 2 workers x 1 thread,
`shuffle_method="p2p"`). Wall time, and the peak of the summed RSS of every process the
benchmark started (master or scheduler, workers, their children), sampled every 20 ms.
Results are checked against NumPy on every run.

    python bench/bench_shuffle.py                      # 20,000,000 rows, 2,000,000 keys
    python bench/bench_shuffle.py --rows 2000000 --keys 200000 --reps 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
PARTS = 16


def make_data(rows: int, keys: int) -> Path:
    path = DATA / f"shuffle-{rows}-{keys}.npy"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        data = np.empty((rows, 2), dtype=np.int64)
        data[:, 0] = rng.integers(0, keys, rows)
        data[:, 1] = rng.integers(0, 1000, rows)
        np.save(path, data)
    return path


class Peak:
    """The largest value `measure()` returned, sampled every `every` seconds in a thread."""

    def __init__(self, measure: Callable[[], int], every: float = 0.02) -> None:
        self.measure, self.every, self.peak = measure, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.measure())


def peak_rss() -> Peak:
    """The largest sum of RSS over this process's descendants."""
    return Peak(lambda: _descendants_rss(os.getpid()))


def _descendants_rss(root: int) -> int:
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, frontier = 0, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid:
                total += rss.get(child, 0)
                frontier.append(child)
    return total


def _timed(fn: Callable[[], Any]) -> tuple[float, int, Any]:
    with peak_rss() as peak:
        start = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - start
    return seconds, peak.peak, value


# ---- shardmill ---------------------------------------------------------------------------------


def shardmill_runs(path: Path, out: Path) -> dict[str, Callable[[], Any]]:
    from shardmill import LocalCluster, Pipeline

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    cluster = LocalCluster(workers=2, slots=1, imports=["shuffle_tasks"], env=env).start()
    client = cluster.client()
    source = Pipeline.read(path, shards=PARTS).map("shuffle_tasks:named")

    def groupby() -> Any:
        p = source.groupby("user", partitions=PARTS).agg(total=("amount", "sum")).collect()
        return client.run(p).result(timeout=1800)

    def sort() -> Any:
        shutil.rmtree(out, ignore_errors=True)
        result = client.run(source.sort("user", partitions=PARTS).write(out)).result(timeout=1800)
        return result["files"]

    return {"groupby": groupby, "sort": sort, "_close": cluster.stop}


# ---- Dask --------------------------------------------------------------------------------------


def dask_runs(path: Path, out: Path) -> dict[str, Callable[[], Any]]:
    import dask.dataframe as dd
    from dask.distributed import Client
    from distributed.deploy.subprocess import SubprocessCluster

    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *sys.path])  # its workers import us
    from shuffle_tasks import load_frame

    cluster = SubprocessCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
    client = Client(cluster)
    rows = np.load(path, mmap_mode="r").shape[0]
    chunk = -(-rows // PARTS)

    def frame() -> Any:
        parts = [(str(path), a, min(a + chunk, rows)) for a in range(0, rows, chunk)]
        return dd.from_map(load_frame, parts)

    def groupby() -> Any:
        df = frame()
        s = df.groupby("user").amount.sum(split_out=PARTS, shuffle_method="p2p")
        return client.compute(s).result()

    def sort() -> Any:
        shutil.rmtree(out, ignore_errors=True)
        frame().sort_values("user", shuffle_method="p2p").to_parquet(out, write_index=False)
        return sorted(str(p) for p in Path(out).glob("*.parquet"))

    def close() -> None:
        client.close()
        cluster.close()

    return {"groupby": groupby, "sort": sort, "_close": close}


# ---- checks ------------------------------------------------------------------------------------


def check_groupby(name: str, value: Any, data: np.ndarray) -> None:
    users, inv = np.unique(data[:, 0], return_inverse=True)
    want = np.bincount(inv, weights=data[:, 1]).astype(np.int64)
    if name == "shardmill":
        order = np.argsort(value["user"])
        got_users, got = value["user"][order], value["total"][order]
    else:
        value = value.sort_index()
        got_users, got = value.index.to_numpy(), value.to_numpy()
    assert np.array_equal(got_users, users) and np.array_equal(got, want), f"{name} groupby"


def check_sort(name: str, files: list[str], data: np.ndarray) -> None:
    if name == "shardmill":
        from shardmill.pipeline import read_parts

        keys = read_parts(files)["user"]
    else:
        import pyarrow.parquet as pq

        keys = np.concatenate(
            [
                pq.read_table(f, columns=["user"])["user"].to_numpy()
                for f in sorted(files, key=lambda f: int(Path(f).stem.split(".")[1]))
            ]
        )
    assert len(keys) == len(data) and np.all(np.diff(keys) >= 0), f"{name} sort"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--keys", type=int, default=2_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    path = make_data(args.rows, args.keys)
    data = np.load(path)
    work = Path(tempfile.mkdtemp(prefix="shardmill-shuffle-bench-"))
    systems = {"shardmill": shardmill_runs, "Dask": dask_runs}
    results: dict[str, dict[str, list[tuple[float, int]]]] = {}
    for rep in range(args.reps + 1):  # the first is a warm-up
        for name, make in systems.items():  # alternate, so drift hits both
            runs = make(path, work / name)
            try:
                for what in ("groupby", "sort"):
                    seconds, peak, value = _timed(runs[what])
                    (check_groupby if what == "groupby" else check_sort)(name, value, data)
                    if rep:
                        results.setdefault(name, {}).setdefault(what, []).append((seconds, peak))
                    print(
                        f"rep {rep} {name} {what}: {seconds:.2f} s, peak {peak / 2**20:.0f} MiB",
                        flush=True,
                    )
            finally:
                runs["_close"]()
    summary = {
        name: {
            what: {
                "seconds": statistics.median(s for s, _ in v),
                "peak_mib": statistics.median(p for _, p in v) / 2**20,
            }
            for what, v in by.items()
        }
        for name, by in results.items()
    }
    print(
        json.dumps({"rows": args.rows, "keys": args.keys, "partitions": PARTS, **summary}, indent=1)
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
