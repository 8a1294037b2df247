"""Failover soak: a primary and a standby master with a real etcd, 50 injected failovers.

    python bench/bench_failover.py [--rounds 50] [--shards 16]

Each round runs a job of `sm_tasks:counted` shards, then fails the current primary once a
few shards merged: kill -9 and SIGSTOP (past the lease, then SIGCONT: it must step down) in
turn, so the two masters alternate as primary. The failed master is started again and
becomes the standby. Counts double merges, lost jobs and wrong results (all must be 0) and
prints the takeover times: from the fault to the first shard the new primary dispatches.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

from helpers import cluster_env, runs, wait_until  # noqa: E402
from standby import Etcd, Pair  # noqa: E402

from shardmill import Client  # noqa: E402


def worker(pair: Pair) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "shardmill.worker", "--insecure", "--slots", "1"]
    cmd += ["--master", pair.workers_address(), "--import", "sm_tasks"]
    cmd += ["--heartbeat-interval", "0.05"]
    env = {**cluster_env(), "SHARDMILL_WORKER_RECONNECT_MAX": "0.2"}
    return subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)


def client(pair: Pair) -> Client:
    return Client(pair.clients_address(), insecure=True, connect_timeout=2)


def one_round(pair: Pair, n: int, shards: int, runs_dir: Path, kill: bool) -> dict[str, object]:
    """One job and one failover; what happened."""
    old = pair.primary()
    new = pair.standby_of(old)
    with client(pair) as c:
        wait_until(lambda: c.ping().standby.startswith("in sync"), 30, "the standby in sync")
        args = [(str(runs_dir), f"r{n}-{i}", i, 0.05) for i in range(shards)]
        job = c.map("sm_tasks:counted", args, chunk_size=1)
        wait_until(lambda: c.status(job.id).shards_done >= 4, 30, "4 merged shards")
    at = pair.signal(old, signal.SIGKILL if kill else signal.SIGSTOP)
    first = wait_until(lambda: new.event("first_dispatch"), 30, "the standby to dispatch")
    if not kill:
        pair.signal(old, signal.SIGCONT)
        wait_until(lambda: old.event("stepped_down"), 30, "the old primary to step down")
    pair.close(old)
    pair.start(old)  # it comes back as the standby
    wait_until(lambda: old.event("standby"), 30, "the restarted master to wait")
    with client(pair) as c:
        done = c.job(job.id)
        result = done.result(timeout=60)
        info = done.status(shards=True)
    merged = [s.merged for s in info.shards or []]
    ran = sum(runs(str(runs_dir), f"r{n}-{i}") for i in range(shards))
    return {
        "kind": "kill" if kill else "stop",
        "takeover": float(first["wall"]) - at,
        "exact": result == [i + 1 for i in range(shards)],
        "double_merges": sum(m > 1 for m in merged),
        "reruns": ran - shards,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--shards", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "runs").mkdir()
        etcd = Etcd(base / "etcd")
        pair = Pair(base, etcd=etcd.url)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            pair.start(pair.masters[0])
            pair.primary()
            pair.start(pair.masters[1])
            workers = [worker(pair) for _ in range(2)]
            rows = []
            for n in range(args.rounds):
                row = one_round(pair, n, args.shards, base / "runs", kill=n % 2 == 0)
                rows.append(row)
                print(json.dumps({"round": n, **row}), flush=True)
            report(rows)
        finally:
            for w in workers:
                w.kill()
                w.wait()
            pair.stop()
            etcd.stop()


def report(rows: list[dict[str, object]]) -> None:
    for kind in ("kill", "stop"):
        times = sorted(float(r["takeover"]) for r in rows if r["kind"] == kind)
        if times:
            p95 = statistics.quantiles(times, n=20)[18] if len(times) > 1 else times[0]
            print(
                f"{kind}: n={len(times)} min {times[0]:.2f} s, "
                f"median {statistics.median(times):.2f} s, p95 {p95:.2f} s, max {times[-1]:.2f} s"
            )
    wrong = sum(not r["exact"] for r in rows)
    doubles = sum(int(r["double_merges"]) for r in rows)
    reruns = sum(int(r["reruns"]) for r in rows)
    print(f"rounds {len(rows)}: wrong results {wrong}, double merges {doubles}, re-runs {reruns}")


if __name__ == "__main__":
    main()
