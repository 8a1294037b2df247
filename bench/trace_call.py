"""Where a `call` spends its time, hop by hop: `python bench/trace_call.py [--calls 2000]`.

Runs sequential no-op calls (W2) on a LocalCluster whose every process, and this client, has
bench/tracing/sitecustomize.py timestamp its ZeroMQ sends and receives, poll wake-ups and pipe
writes on the one monotonic clock of the machine. Prints, per step of a call, the median time
from the step before: what is Python in one process (a receive to the next send) and what is
a hop between processes (a send to the receiver waking).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from bench_harness import child_pids, new_cluster, prepare_environment
from bench_systems import ShardmillSystem

TRACING = Path(__file__).resolve().parent / "tracing"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--insecure", action="store_true", help="no CURVE (default: CURVE on)")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="shardmill-trace-"))
    os.environ["SHARDMILL_BENCH_TRACE"] = str(out)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(TRACING), os.environ.get("PYTHONPATH")])
    )
    tracer = _load_tracer()  # this process is the client: traced too
    prepare_environment()
    try:
        with new_cluster(insecure=args.insecure) as cluster:
            system = ShardmillSystem(cluster)
            for _ in range(300):  # warm-up
                system.call_noop()
            assert cluster.master is not None
            roles = {os.getpid(): "client", cluster.master.pid: "master"}
            for agent in cluster.workers:
                roles[agent.pid] = "agent"
                roles.update({pid: "child" for pid in child_pids(agent.pid)})
            for i in range(args.calls):
                tracer.record("CALL")
                system.call_noop()
                tracer.record("END")
                if i % 500 == 499:
                    system.client.prune(0.0)
        tracer._dump()
        report(read(out, roles))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return 0


def _load_tracer() -> Any:
    """The tracer, in this process too (a sitecustomize of Python's own may be the one
    imported by that name at start-up)."""
    spec = importlib.util.spec_from_file_location("shardmill_trace", TRACING / "sitecustomize.py")
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Event = tuple[int, str, str]  # ns, role, what


def read(out: Path, roles: dict[int, str]) -> list[Event]:
    events: list[Event] = []
    for path in out.glob("*.txt"):
        role = roles.get(int(path.stem))
        if role is None:
            continue  # a process that was not on the call path (a replaced child)
        for line in path.read_text().splitlines():
            ns, _, what = line.partition(" ")
            events.append((int(ns), role, what))
    return sorted(events)


def report(events: list[Event]) -> None:
    client_port = _port(events, "client", "send")
    worker_port = _port(events, "master", "send", not_port=client_port)
    dealer, router = "send5@", "send6@"
    steps = [
        ("client", "CALL"),
        ("client", f"{dealer}{client_port}"),
        ("master", "wake"),
        ("master", f"recv6@{client_port}"),
        ("master", f"{router}{worker_port}"),
        ("agent", "wake"),
        ("agent", f"recv5@{worker_port}"),
        ("agent", "writev"),
        ("child", "writev"),
        ("agent", "wake"),
        ("agent", f"{dealer}{worker_port}"),
        ("master", "wake"),
        ("master", f"recv6@{worker_port}"),
        ("master", f"{router}{client_port}"),
        ("client", f"recv5@{client_port}"),
        ("client", "END"),
    ]
    gaps: list[list[float]] = [[] for _ in steps]
    for call in _calls(events):
        times = _walk(call, steps)
        if times is not None:
            for k in range(1, len(steps)):
                gaps[k].append((times[k] - times[k - 1]) / 1000)
            gaps[0].append((times[-1] - times[0]) / 1000)
    if not gaps[0]:
        print("no call followed every step: was a worker replaced?")
        return
    print(f"{len(gaps[0])} calls; median µs from the step before (zmq: 5 DEALER, 6 ROUTER)")
    totals: Counter[str] = Counter()
    for k in range(1, len(steps)):
        before, now = steps[k - 1], steps[k]
        if before[0] == now[0]:
            kind = f"{now[0]}'s Python"
        elif now[0] == "child":
            kind = "pipe, then the child's Python"
        else:
            kind = "pipe" if before[0] == "child" else "ZeroMQ hop"
        median = statistics.median(gaps[k])
        totals[kind] += median
        print(f"  {before[0]:>6} {before[1]:<12} -> {now[0]:>6} {now[1]:<12} {median:7.1f}  {kind}")
    print(f"  a whole call: {statistics.median(gaps[0]):.1f} µs; by kind: ", end="")
    print(", ".join(f"{kind} {total:.0f}" for kind, total in totals.most_common()))


def _port(events: list[Event], role: str, prefix: str, not_port: str = "") -> str:
    """The port `role` used most for `prefix` (its busiest socket), other than `not_port`."""
    counts = Counter(
        what.split("@")[1]
        for _, r, what in events
        if r == role and what.startswith(prefix) and not what.endswith("@" + not_port)
    )
    if not counts:
        raise SystemExit(f"no {prefix} by the {role} was recorded")
    return counts.most_common(1)[0][0]


def _calls(events: list[Event]) -> list[list[Event]]:
    calls: list[list[Event]] = []
    for event in events:
        if event[1] == "client" and event[2] == "CALL":
            calls.append([])
        if calls:
            calls[-1].append(event)
    return calls


def _walk(call: list[Event], steps: Sequence[tuple[str, str]]) -> list[int] | None:
    """The time of each step, each the first matching event after the step before; None when
    the call did not go that way (a heartbeat or a prune between)."""
    times: list[int] = []
    for ns, role, what in call:
        if len(times) < len(steps) and (role, what) == steps[len(times)]:
            times.append(ns)
    return times if len(times) == len(steps) else None


if __name__ == "__main__":
    sys.exit(main())
