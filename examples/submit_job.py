"""Submit a column_stats job to a running master and print the merged result.

    python examples/submit_job.py /data/points.npy --shards 32 --master tcp://127.0.0.1:5556

With no dataset path, it writes a small random dataset first (next to this script's cwd, or in
$SHARDMILL_DATA), which only works when the workers can read the same path.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from shardmill import Client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", help="a .npy file every worker can read")
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows when generating")
    parser.add_argument("--master", default=os.environ.get("SHARDMILL_MASTER"))
    parser.add_argument(
        "--keys",
        default=os.environ.get("SHARDMILL_KEYS"),
        help="CURVE key directory (client.key_secret and master.key)",
    )
    args = parser.parse_args()

    path = Path(args.dataset) if args.dataset else _generate(args.rows)
    with Client(args.master, keys=args.keys) as client:
        job = client.submit("column_stats", path, shards=args.shards)
        print(f"submitted job {job.id} over {path} in {args.shards} shards")
        stats = job.result(timeout=600)
    print(f"rows: {stats['count']}, shards merged: {stats['shards_merged']}")
    for name in ("mean", "std", "min", "max"):
        print(f"{name:>5}: {np.array2string(stats[name], precision=4)}")


def _generate(rows: int) -> Path:
    out = Path(os.environ.get("SHARDMILL_DATA", ".")).resolve() / "example.npy"
    rng = np.random.default_rng(0)
    np.save(out, rng.normal(size=(rows, 10)))
    print(f"wrote {rows:,} x 10 to {out}")
    return out


if __name__ == "__main__":
    main()
