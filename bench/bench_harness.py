"""Shared pieces of the benchmark harness: sizes, result rows, timing loops, process probes."""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardmill import LocalCluster

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DATA_DIR = BENCH_DIR / ".data"
log = logging.getLogger("bench")
SHARDMILL = "shardmill"
POOL = "Pool(2)"
HANGS = "hangs"
CONNECT_TIMEOUT = 60.0  # a by-value submit carries 0.8 GB: give the master time to take it
JOB_TIMEOUT = 600.0
WORKERS = 2
# W4 sends the whole 0.8 GB as one map job, above the default 256 MiB message limit: lift the
# limit on both ends (client: SHARDMILL_MAX_MESSAGE_BYTES, master: ..._MASTER_...).
MESSAGE_LIMIT_ENV = {
    "SHARDMILL_MAX_MESSAGE_BYTES": str(2**31 - 1),
    "SHARDMILL_MASTER_MAX_MESSAGE_BYTES": str(2**31 - 1),
}


@dataclass(frozen=True)
class Sizes:
    """Every size a workload uses; `--quick` swaps in smaller ones."""

    name: str
    w1_tasks: int = 10_000
    w2_calls: int = 200
    rows: int = 10_000_000
    cols: int = 10
    shards: int = 32
    fault_extra: float = 0.2
    fault_kill_after: float = 1.0
    scale_tasks: int = 1_000_000
    curve_shards: tuple[int, ...] = (2, 8, 32, 128, 512, 2048)
    far_tasks: int = 2_000
    many_workers: int = 500
    many_shards: int = 20_000


FULL = Sizes("full")
QUICK = Sizes("quick", rows=1_000_000, scale_tasks=100_000, many_workers=200, many_shards=5_000)


@dataclass(frozen=True)
class Target:
    """`shardmill value <op> value`, times Pool's value or another metric's, when relative."""

    op: str  # ">=" or "<="
    value: float
    relative_to: str = ""  # "" absolute, "pool" for Pool's value, or a metric key

    def text(self) -> str:
        if not self.relative_to:
            return f"{self.op} {self.value:g}"
        what = POOL if self.relative_to == "pool" else self.relative_to
        return f"{self.op} {self.value:g} x {what}"


@dataclass
class Metric:
    """One row of the results table."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    values: dict[str, float | str] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    target: Target | None = None
    passed: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, system: str, samples: Sequence[float]) -> Metric:
        """Record a system's samples; its value is their median."""
        self.samples[system] = [float(s) for s in samples]
        self.values[system] = statistics.median(samples)
        return self


def timed(fn: Callable[[], object]) -> float:
    """Seconds `fn()` takes, by `time.perf_counter`."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(
    systems: Sequence[Any],
    reps: int,
    run: Callable[[Any], float],
    *,
    warmup: int = 1,
    before: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Run `run(system)` warmup + reps times per system, alternating systems to share drift;
    `before()` runs ahead of each repetition (to wait for a quiet machine)."""
    samples: dict[str, list[float]] = {s.name: [] for s in systems}
    for i in range(warmup + reps):
        if before is not None:
            before()
        for system in systems:
            value = run(system)
            if i >= warmup:
                samples[system.name].append(value)
    return samples


def prepare_environment() -> None:
    """Run from the repository root, whose tree the master accepts datasets from by default,
    with the message limit lifted for W4."""
    os.chdir(REPO_DIR)
    os.environ.update(MESSAGE_LIMIT_ENV)
    # With PYTHONDONTWRITEBYTECODE set (some CI images do), every process of the cluster and
    # every CLI run compiles its imports from source: start-up would measure the compiler.
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        log.warning("PYTHONDONTWRITEBYTECODE unset for the processes the benchmark starts")


def cluster_env() -> dict[str, str]:
    """The environment for cluster processes: bench/ first on PYTHONPATH, for bench_tasks."""
    env = dict(os.environ)
    paths = [str(BENCH_DIR), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def new_cluster(
    *, heartbeat_interval: float = 1.0, heartbeat_liveness: int = 3, slots: int = 1, **extra: Any
) -> LocalCluster:
    """The cluster every workload uses: a master and 2 workers with one slot each."""
    return LocalCluster(
        workers=WORKERS,
        slots=slots,
        imports=["bench_tasks"],
        env=cluster_env(),
        heartbeat_interval=heartbeat_interval,
        heartbeat_liveness=heartbeat_liveness,
        **extra,
    )


def child_pids(pid: int) -> list[int]:
    """Direct children of a single-threaded process (the worker agent is one)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except FileNotFoundError:
        return []


def cpu_seconds(pid: int) -> float:
    """A live process's CPU time so far (user + system, every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mib(pid: int) -> float:
    """A live process's peak resident set size (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmHWM line in /proc/{pid}/status")


class CpuMonitor:
    """How much CPU other processes (say, a test suite next door) took while a workload ran.

    `paused()` leaves out a stretch, such as the time spent waiting for a quiet machine."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.foreign = self.wall = 0.0
        self._mark = self._snapshot()

    def foreign_share(self) -> float:
        """CPU used outside this process tree while measured, as a share of all CPUs' time."""
        self._close()
        return max(0.0, self.foreign / (max(self.wall, 1e-9) * (os.cpu_count() or 1)))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._close()
        try:
            yield
        finally:
            self._mark = self._snapshot()

    def _close(self) -> None:
        busy, ours, t = self._snapshot()
        self.foreign += (busy - self._mark[0]) - (ours - self._mark[1])
        self.wall += t - self._mark[2]
        self._mark = (busy, ours, t)

    def _snapshot(self) -> tuple[float, float, float]:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
        busy = user + nice + system + irq + softirq + steal
        ours = sum(_cpu_ticks(pid) for pid in _tree(os.getpid()))
        return busy / self.tick, ours / self.tick, time.perf_counter()


def _tree(pid: int) -> list[int]:
    """A process and all its live descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            todo += _task_children(task)
    return out


def _task_children(task: Path) -> list[int]:
    try:
        return [int(c) for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def _cpu_ticks(pid: int) -> int:
    # utime, stime, and cutime, cstime: the reaped children's share is folded into their parent.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15])


def thread_cpu() -> dict[tuple[int, str, str], float]:
    """CPU seconds so far of every thread in this process tree, by (pid, command, thread)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[int, str, str], float] = {}
    for pid in _tree(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        role = next((c.decode() for c in cmd if c.startswith(b"shardmill.")), "bench/client")
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                stat = (task / "stat").read_text()
            except FileNotFoundError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            key = (pid, role, f"{name}[{task.name}]" if name == "python" else name)
            out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def wait_quiet(limit: float, max_wait: float, window: float = 1.0) -> float:
    """Wait up to `max_wait` s until other processes use under `limit` of the CPUs for a
    `window`; return the last share seen (the machine is shared with other people's tests)."""
    deadline = time.monotonic() + max_wait
    while True:
        monitor = CpuMonitor()
        time.sleep(window)
        share = monitor.foreign_share()
        if share < limit or time.monotonic() > deadline:
            return share
