"""Chaos soak (issue 36): N minutes of jobs while something random happens every 1-5 s.

    python bench/soak.py --minutes 30 --seed 1 --out bench/results/soak-30m.json

A real cluster (a master on a state dir, 4 workers of 2 slots, CURVE keys) runs a mix of maps,
column_stats over arrays sent by value, and jobs whose tasks raise on purpose. Faults, chosen
with the seed: a worker agent SIGKILLed (and a new one started), a task's child process
SIGKILLed, an agent SIGSTOPped for 1-4 s then SIGCONTed, the master SIGKILLed and started again
on its state dir, garbage sent to both ports (with a real key, with and without an id of its
own). Every result is checked: a map exactly, column_stats against NumPy, a raising job must
fail with the task's own ValueError. Printed and written as JSON: jobs, faults by kind,
restarts and the seconds until the master answered after each, lost and wrong jobs, phantom
workers (ids ZeroMQ made up) and the master's RSS over time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from shardmill import LocalCluster, __version__
from shardmill.errors import JobFailed, MasterUnreachable, RemoteError, ShardmillError
from shardmill.job import Job
from shardmill.wire.codec import encode
from shardmill.wire.protocol import Heartbeat, Ready
from shardmill.wire.security import Security

HERE = Path(__file__).resolve().parent
FAULTS = ("worker_kill", "child_kill", "sigstop", "master_kill", "garbage")
IN_FLIGHT = 6  # jobs kept running at once
JOB_DEADLINE = 300.0  # seconds: a job unfinished this long is counted lost
SAMPLE_EVERY = 10.0  # seconds between RSS and phantom samples


@dataclass
class Expect:
    kind: str  # map | stats | raising
    value: Any
    since: float


@dataclass
class Tally:
    submitted: int = 0
    exact: int = 0
    failed_as_they_should: int = 0
    wrong: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    failed_by_faults: list[str] = field(default_factory=list)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    restarts: list[float] = field(default_factory=list)  # seconds until the master answered
    phantoms: set[str] = field(default_factory=set)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (minute, MiB)
    unnamed: dict[int, dict[str, float]] = field(default_factory=dict)  # master pid -> counts


class Soak:
    def __init__(self, args: argparse.Namespace, cluster: LocalCluster) -> None:
        self.rng = random.Random(args.seed)
        self.np_rng = np.random.default_rng(args.seed)
        self.cluster = cluster
        self.client = cluster.client(connect_timeout=2.0)
        self.flight: dict[str, Expect] = {}
        self.stopped: list[tuple[int, float]] = []  # SIGSTOPped agents: (pid, SIGCONT at)
        self.orphans: list[int] = []  # children of killed agents
        self.t = Tally()
        self.started = time.monotonic()

    # ---- the loop ------------------------------------------------------------------------------

    def run(self, minutes: float) -> Tally:
        end = self.started + minutes * 60
        next_fault = self.started + self.rng.uniform(1, 5)
        next_sample = self.started
        while (now := time.monotonic()) < end:
            self._resume_stopped(now)
            if now >= next_fault:
                self._fault(self.rng.choice(FAULTS))
                next_fault = time.monotonic() + self.rng.uniform(1, 5)
            if now >= next_sample:
                self._sample()
                next_sample = now + SAMPLE_EVERY
            self._fill()
            self._check()
            time.sleep(0.05)  # pacing: the loop asks the master a few times a second
        self._resume_stopped(float("inf"))
        drain_end = time.monotonic() + JOB_DEADLINE
        while self.flight and time.monotonic() < drain_end:
            self._check()
            time.sleep(0.1)
        self._sample()
        self.t.lost += [f"{j}: unfinished at the end" for j in self.flight]
        return self.t

    def _fill(self) -> None:
        while len(self.flight) < IN_FLIGHT:
            try:
                job_id, expect = self._submit()
            except (MasterUnreachable, ShardmillError):
                return  # the master is restarting: try again on the next turn
            self.flight[job_id] = expect
            self.t.submitted += 1

    def _submit(self) -> tuple[str, Expect]:
        kind = self.rng.choice(("map", "map", "stats", "raising"))
        now, nap = time.monotonic(), self.rng.choice((0.0, 0.005, 0.02))
        if kind == "stats":
            arr = self.np_rng.normal(size=(self.rng.randint(500, 5000), 4))
            job = self.client.submit("column_stats", arr, shards=self.rng.randint(2, 8))
            return job.id, Expect(kind, arr, now)
        n = self.rng.randint(10, 120)
        function = "soak_tasks:square" if kind == "map" else "soak_tasks:picky"
        args = [(i + 1, nap) for i in range(n)]
        chunk = self.rng.choice((1, 1, 4, 16)) if kind == "map" else 1
        job = self.client.map(function, args, chunk_size=chunk, max_attempts=5)
        return job.id, Expect(kind, [(i + 1) ** 2 for i in range(n)], now)

    # ---- checking ------------------------------------------------------------------------------

    def _check(self) -> None:
        for job_id, expect in list(self.flight.items()):
            try:
                info = self.client.status(job_id)
            except MasterUnreachable:
                return
            except ShardmillError as e:
                self.t.lost.append(f"{job_id}: {e}")
                del self.flight[job_id]
                continue
            self.t.phantoms.update(w for w in info.lost_workers if w.startswith("0x00"))
            if info.state == "running":
                if time.monotonic() - expect.since > JOB_DEADLINE:
                    self.t.lost.append(f"{job_id}: still running after {JOB_DEADLINE:.0f} s")
                    del self.flight[job_id]
                continue
            try:
                self._judge(job_id, expect, Job(self.client, job_id))
            except MasterUnreachable:
                return
            del self.flight[job_id]

    def _judge(self, job_id: str, expect: Expect, job: Job) -> None:
        try:
            value = job.result(timeout=30)
        except RemoteError as e:
            if expect.kind == "raising" and e.remote_type == "ValueError":
                self.t.failed_as_they_should += 1
            else:
                self.t.wrong.append(f"{job_id} ({expect.kind}) raised {e.remote_type}: {e}")
            return
        except JobFailed as e:
            first = str(e).splitlines()[0]
            if expect.kind == "raising":
                self.t.wrong.append(f"{job_id} (raising) failed without its ValueError: {first}")
            else:
                self.t.failed_by_faults.append(f"{job_id} ({expect.kind}): {first}")
            return
        if expect.kind == "raising" or not _same(expect, value):
            self.t.wrong.append(f"{job_id} ({expect.kind}): a wrong result")
        else:
            self.t.exact += 1

    # ---- faults --------------------------------------------------------------------------------

    def _fault(self, kind: str) -> None:
        getattr(self, f"_{kind}")()
        self.t.faults[kind] += 1

    def _agents(self) -> list[Any]:
        stopped = {pid for pid, _ in self.stopped}
        return [p for p in self.cluster.workers if p.poll() is None and p.pid not in stopped]

    def _worker_kill(self) -> None:
        agents = self._agents()
        if not agents:
            return
        victim = self.rng.choice(agents)
        self.orphans += _children(victim.pid)  # must die with their agent
        victim.kill()
        victim.wait()
        self.cluster.workers.remove(victim)
        self.cluster.add_worker()

    def _child_kill(self) -> None:
        agents = self._agents()
        children = _children(self.rng.choice(agents).pid) if agents else []
        if children:
            os.kill(self.rng.choice(children), signal.SIGKILL)

    def _sigstop(self) -> None:
        agents = self._agents()
        if not agents:
            return
        agent = self.rng.choice(agents)
        os.kill(agent.pid, signal.SIGSTOP)
        self.stopped.append((agent.pid, time.monotonic() + self.rng.uniform(1, 4)))

    def _resume_stopped(self, now: float) -> None:
        for pid, at in [s for s in self.stopped if s[1] <= now]:
            os.kill(pid, signal.SIGCONT)
            self.stopped.remove((pid, at))

    def _master_kill(self) -> None:
        self._sample_unnamed()
        self.cluster.kill_master()
        started = time.monotonic()
        self.cluster.start_master()
        while True:
            try:
                self.client.ping()
                break
            except MasterUnreachable:
                continue
        self.t.restarts.append(round(time.monotonic() - started, 3))

    def _garbage(self) -> None:
        cluster = self.cluster
        for address, role, identity in (
            (cluster.worker_address, "worker", b"garbage-sender"),
            (cluster.client_address, "client", b""),
            (cluster.worker_address, "worker", b""),  # no id of its own: refused
        ):
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if identity:
                sock.setsockopt(zmq.IDENTITY, identity)
            Security(Path(str(cluster.keys_dir))).client(sock, role)
            sock.connect(address)
            for _ in range(20):
                sock.send_multipart([self.rng.randbytes(self.rng.randint(0, 64))])
            ready = Ready(slots=1, hostname="garbage", pid=os.getpid(), version=__version__)
            sock.send_multipart(encode(ready if not identity else Heartbeat()))
            sock.poll(200)  # an answer (or not): the peer goes away either way
            sock.close(linger=0)

    # ---- samples -------------------------------------------------------------------------------

    def _sample(self) -> None:
        master = self.cluster.master
        if master is not None and master.poll() is None:
            minute = round((time.monotonic() - self.started) / 60, 2)
            self.t.rss.append((minute, _rss_mib(master.pid)))
        try:
            self.t.phantoms.update(
                w.worker_id for w in self.client.workers() if w.worker_id.startswith("0x00")
            )
            self._sample_unnamed()
        except MasterUnreachable:
            pass

    def _sample_unnamed(self) -> None:
        master = self.cluster.master
        if master is None:
            return
        head = "shardmill_unnamed_messages_total{outcome="
        counts = {}
        for line in self.client.metrics().splitlines():
            if line.startswith(head):
                label, value = line[len(head) :].split("} ")
                counts[label.strip('"')] = float(value)
        self.t.unnamed[master.pid] = counts


def _same(expect: Expect, value: Any) -> bool:
    if expect.kind == "map":
        return bool(value == expect.value)
    arr = expect.value
    return all(
        np.allclose(value[k], f(arr, axis=0))
        for k, f in (("mean", np.mean), ("min", np.min), ("max", np.max), ("sum", np.sum))
    ) and np.allclose(value["var"], arr.var(axis=0))


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def report(t: Tally, args: argparse.Namespace, leftovers: list[int]) -> dict[str, Any]:
    unnamed = collections.Counter[str]()
    for counts in t.unnamed.values():
        unnamed.update(counts)
    restarts = sorted(t.restarts)
    return {
        "minutes": args.minutes,
        "seed": args.seed,
        "workers": args.workers,
        "jobs": t.submitted,
        "exact": t.exact,
        "failed_as_they_should": t.failed_as_they_should,
        "wrong": t.wrong,
        "lost": t.lost,
        "failed_by_faults": t.failed_by_faults,
        "faults": dict(t.faults),
        "restarts": len(t.restarts),
        "seconds_to_answer": t.restarts,
        "seconds_to_answer_median_max": (
            [statistics.median(restarts), restarts[-1]] if restarts else []
        ),
        "phantoms": sorted(t.phantoms),
        "unnamed_messages": dict(unnamed),
        "master_rss_mib": t.rss,
        "leftover_processes": leftovers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        cluster = LocalCluster(
            workers=args.workers,
            slots=2,
            imports=["soak_tasks"],
            env=env,
            state_dir=Path(tmp) / "state",
            log_dir=Path(tmp) / "logs",
            heartbeat_interval=0.25,
            heartbeat_liveness=4,
        )
        with cluster:
            soak = Soak(args, cluster)
            tally = soak.run(args.minutes)
            pids = [p.pid for p in cluster.workers]
            children = [c for pid in pids for c in _children(pid)] + soak.orphans
        leftovers = [pid for pid in pids + children if Path(f"/proc/{pid}").exists()]
    figures = report(tally, args, leftovers)
    print(json.dumps(figures, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
    sys.exit(1 if figures["wrong"] or figures["lost"] or figures["phantoms"] else 0)


if __name__ == "__main__":
    main()
