"""A three-stage ETL on a local cluster: read a CSV of purchases, clean it, total per user
(combined on the map side, shuffled between workers by user), sort by total, write the parts;
then check every number against NumPy. Run: python examples/etl_pipeline.py [--rows N]."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shardmill import LocalCluster, Pipeline
from shardmill.pipeline import read_parts

HERE = Path(__file__).resolve().parent


def make_csv(path: Path, rows: int) -> np.ndarray:
    rng = np.random.default_rng(42)
    users = rng.integers(0, rows // 10 + 1, rows)
    amounts = rng.integers(-20, 500, rows)
    countries = rng.choice(["de", "fr", "us", "jp"], rows)
    with path.open("w") as f:
        f.write("user,country,amount\n")
        for u, c, a in zip(users.tolist(), countries.tolist(), amounts.tolist(), strict=True):
            f.write(f"{u},{c},{a}\n")
    return np.stack([users, amounts], axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shardmill-etl-"))
    data = make_csv(work / "purchases.csv", args.rows)
    pipeline = (
        Pipeline.read(work / "purchases.csv", shards=8)
        .map("etl:clean")
        .groupby("user")
        .agg(total=("amount", "sum"), n=("amount", "count"), biggest=("amount", "max"))
        .sort("total", descending=True)
        .write(work / "totals")
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    with LocalCluster(workers=2, imports=["etl"], env=env) as cluster:
        started = time.perf_counter()
        job = cluster.client().run(pipeline, name="etl")
        written = job.result(timeout=300)
        seconds = time.perf_counter() - started
        stages = job.progress()
    for stage in stages:
        print(
            f"stage {stage.index} {stage.label}: {stage.done}/{stage.shards} shards, "
            f"{stage.bytes_shuffled:,} bytes shuffled"
        )
    table = read_parts(written["files"])
    keep = data[:, 1] >= 0
    users, inverse = np.unique(data[keep, 0], return_inverse=True)
    totals = np.bincount(inverse, weights=data[keep, 1]).astype(np.int64)
    got = dict(zip(table["user"].tolist(), table["total"].tolist(), strict=True))
    exact = got == dict(zip(users.tolist(), totals.tolist(), strict=True))
    ordered = bool(np.all(np.diff(table["total"]) <= 0))
    print(
        f"{len(table['user']):,} users in {len(written['files'])} files, {seconds:.2f} s; "
        f"top user {table['user'][0]} spent {table['total'][0]}"
    )
    print("matches NumPy:", exact and ordered)
    return 0 if exact and ordered else 1


if __name__ == "__main__":
    sys.exit(main())
