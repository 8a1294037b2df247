"""Checkpointing on vs off, and the time from a master restart to its first new merge.

    python bench/bench_checkpoint.py [--reps 9] [--rows 10000000] [--wait-quiet 30] [--rev REV]

Runs in one process, side by side: the same jobs on two LocalClusters, one without and one
with `--state-dir`, both up at once and taking turns job by job. Prints medians; targets
(issue "Checkpointing"): at most 5 % slower with checkpointing on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench_harness import CpuMonitor, wait_quiet
from bench_runtime import REV_ENV, rerun_at, runtime_source

from shardmill import LocalCluster
from shardmill.cli.demo import generate

HERE = Path(__file__).resolve().parent


def _dataset(rows: int) -> Path:
    path = HERE / ".data" / f"rows{rows}_cols10_seed0.npy"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        generate(path, rows, 10, seed=0)
    return path


def _cluster(state_dir: Path | None) -> LocalCluster:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return LocalCluster(
        workers=2, imports=["bench_tasks", "ckpt_tasks"], env=env, state_dir=state_dir
    )


@dataclass
class Paired:
    """One workload's timings with checkpointing off and on, taken in turns."""

    off: list[float] = field(default_factory=list)
    on: list[float] = field(default_factory=list)
    foreign: float = 0.0  # share of the CPUs other people's processes took meanwhile

    def ratio(self) -> float:
        """Median on / median off: the issue's measure."""
        return statistics.median(self.on) / statistics.median(self.off)

    def paired_ratio(self) -> float:
        """Median of on / off over neighbouring pairs, which share the machine's load."""
        return statistics.median(b / a for a, b in zip(self.off, self.on, strict=True))

    def line(self, name: str) -> str:
        off, on = statistics.median(self.off), statistics.median(self.on)
        verdict = "ok" if self.ratio() <= 1.05 else "OVER the 5 % target"
        return (
            f"{name:>13}: off {off * 1e3:.1f} ms, on {on * 1e3:.1f} ms, ratio {self.ratio():.3f} "
            f"({verdict}); paired {self.paired_ratio():.3f}; off {_span(self.off)}, "
            f"on {_span(self.on)} ms; others took {self.foreign:.0%} of the CPUs"
        )


def _span(times: list[float]) -> str:
    return f"{min(times) * 1e3:.1f}-{max(times) * 1e3:.1f}"


def _paired(off: Callable[[], object], on: Callable[[], object], reps: int, quiet: float) -> Paired:
    """Both settings in turns (which goes first alternates too), so a neighbour's load on this
    shared machine falls on both alike; with `quiet`, each pair first waits up to that long
    for a second in which other processes use under 10 % of the CPUs."""
    off()  # warm-up: page cache, children's imports
    on()
    out = Paired()
    monitor = CpuMonitor()
    for rep in range(reps):
        if quiet > 0:
            with monitor.paused():
                wait_quiet(0.10, quiet)
        for fn, times in [(off, out.off), (on, out.on)][:: 1 if rep % 2 == 0 else -1]:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    out.foreign = monitor.foreign_share()
    return out


def measure(reps: int, rows: int, quiet: float = 0.0) -> dict[str, Paired]:
    """Both clusters up at once (the idle one only heartbeats), the same jobs on each."""
    data = _dataset(rows)
    args = [(i,) for i in range(10_000)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        _cluster(None) as c_off,
        _cluster(Path(tmp) / "state") as c_on,
        c_off.client() as off,
        c_on.client() as on,
    ):
        return {
            "column_stats": _paired(
                lambda: off.submit("column_stats", data, shards=32).result(600),
                lambda: on.submit("column_stats", data, shards=32).result(600),
                reps,
                quiet,
            ),
            "map10k": _paired(
                lambda: off.map("bench_tasks:noop1", args).result(600),
                lambda: on.map("bench_tasks:noop1", args).result(600),
                reps,
                quiet,
            ),
        }


def restart_to_first_merge() -> float:
    """Kill -9 the master mid-job, start it again, time until a shard merges."""
    with tempfile.TemporaryDirectory() as tmp, _cluster(Path(tmp) / "s") as c:
        client = c.client()
        job = client.map("ckpt_tasks:sleepy", [(0.05,)] * 200, chunk_size=1)
        while job.status().shards_done < 20:
            time.sleep(0.01)
        c.kill_master()
        t = time.perf_counter()
        c.start_master()
        client.close()
        client = c.client()
        start_done = client.status(job.id).shards_done
        while client.status(job.id).shards_done <= start_done:
            time.sleep(0.005)
        elapsed = time.perf_counter() - t
        job.result(timeout=600)
        client.close()
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each pair, wait up to S seconds for a quiet machine (default: no wait)",
    )
    parser.add_argument("--verbose", action="store_true", help="print every timing")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart timing")
    parser.add_argument("--rev", default="", help="benchmark this git revision of the runtime")
    args = parser.parse_args()
    if args.rev and REV_ENV not in os.environ:
        rerun_at(args.rev, __file__, sys.argv[1:])
    print(f"runtime: {runtime_source()}")
    for key, paired in measure(args.reps, args.rows, args.wait_quiet).items():
        print(paired.line(key))
        if args.verbose:
            print("   off ms:", " ".join(f"{t * 1e3:.1f}" for t in paired.off))
            print("   on ms: ", " ".join(f"{t * 1e3:.1f}" for t in paired.on))
    if not args.no_restart:
        print(
            f"restart to first new merge: {restart_to_first_merge():.3f} s "
            "(default heartbeats: 1 s x 3; workers re-register within that)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
