"""The Swarm deployment (docker/swarm.yaml) on a real single-node swarm, with faults mid-job.

One job of slow shards runs through scaling 2 -> 4 workers, a `docker kill`ed worker task
and a `docker kill`ed master task; Swarm replaces both, the master resumes from its state
volume, work resumes (a new shard starts) within 5 s of the master's kill, and the answer
equals NumPy's with every shard merged once. The task notes each execution as it starts in a
file on the stack's data volume, and every shard's story lists each of them, at its true time.
The job's last fifth waits for a gate the test opens just before the master's kill, so that
the faults land mid-job however slow the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from helpers import wait_until
from swarmenv import Stack, docker, swarm_node

from shardmill.data import synthetic
from shardmill.wire.spec import SyntheticSpec

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

ROWS, COLS, SEED = 300_000, 3, 11
SHARDS, NAP = 80, 1.0  # 80 one-second shards: about 20 s on 4 slots, time to act mid-job
RUNS = "/data/runs.txt"  # on the data volume: a line per execution, from the task itself
# Shards from row GATE_ROW on wait for the GATE file, made just before the master is killed
# (once a shard waits at it): on a slow machine the job would otherwise end before the faults,
# on an idle one they would come before anything runs into the kill. Made before the kill, not
# after it: nothing competes with the new master's start. A gated shard naps GATE_NAP after the
# gate opens, so those waiting at it run through the kill.
GATE, GATE_ROW, GATE_NAP = "/data/gate", ROWS // SHARDS * (SHARDS * 4 // 5), 3.0
SLACK = 0.05  # seconds a story's start may read after the task's own (two clocks' rounding)
# A superseded backup ends in the story when the master lets it go; its worker, told by a cancel
# on the way, may still take it up until the cancel lands (it ran, unreported, in a child's pipe)
CANCEL_TRIP = 5.0
# How an attempt that never started ends: its worker died, or gave it back, before it could.
UNRUN = ("lost", "never started", "released", "handed back")


@pytest.fixture(scope="module")
def stack(docker_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keys = tmp_path_factory.mktemp("swarm") / "keys"
    made = subprocess.run(
        [sys.executable, "-m", "shardmill", "keygen", str(keys)], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    with swarm_node():
        s = Stack(f"smswarm{os.getpid()}{uuid.uuid4().hex[:4]}", keys)
        try:
            s.deploy()
            yield s
        finally:
            try:
                print(s.logs(), file=sys.stderr)  # shown only when a test fails
            finally:
                left = s.remove()
            assert not left, f"stack {s.name} left {left} behind"


def _running(stack: Stack, job: str) -> dict[str, object]:
    status = stack.cli("status", job)
    assert status["state"] == "running", f"the job ended before the fault: {status}"
    return dict(status)


def test_scale_kill_a_worker_and_the_master_mid_job(stack: Stack) -> None:
    # Given the stack up: the master and 2 workers healthy by the image's own HEALTHCHECK
    wait_until(lambda: stack.replicas("master") == "1/1", timeout=120, what="a healthy master")
    wait_until(lambda: stack.replicas("worker") == "2/2", timeout=120, what="2 healthy workers")
    wait_until(lambda: len(stack.cli("workers")) == 2, timeout=60, what="2 workers registered")
    # When a client on the stack's network submits a job of slow shards on generated data
    job = stack.cli(
        "submit", "sm_ops:power_sum", "--format", "synthetic",
        "--synthetic", f"rows={ROWS},cols={COLS},seed={SEED}", "--shards", str(SHARDS),
        "--option", "power=1", "--option", f"nap={NAP}", "--option", f"runs={RUNS}",
        "--option", f"gate={GATE}", "--option", f"gate_row={GATE_ROW}",
        "--option", f"gate_nap={GATE_NAP}",
    )["job_id"]  # fmt: skip
    wait_until(lambda: stack.cli("status", job)["shards_done"] >= 2, timeout=60, what="2 shards")
    before = {w["worker_id"] for w in stack.cli("workers")}
    # And the workers are scaled from 2 to 4 mid-job
    docker("service", "scale", "--detach", f"{stack.name}_worker=4")
    wait_until(lambda: len(stack.cli("workers")) == 4, timeout=90, what="4 workers registered")
    _running(stack, job)
    # And a worker task's container is killed: Swarm starts another in its place
    victim = stack.containers("worker")[0]
    docker("kill", victim)
    wait_until(
        lambda: victim not in (ids := stack.containers("worker")) and len(ids) == 4,
        timeout=90,
        what="Swarm to replace the killed worker task",
    )
    _running(stack, job)
    # And then the master's container is killed: Swarm restarts it on the same state volume
    master = stack.containers("master")
    wait_until(lambda: _at_the_gate(stack), timeout=90, what="a shard waiting at the gate")
    # (the job's last shards may run from now on: 16 of them take 6 s more on 8 slots at least)
    docker("exec", master[0], "touch", GATE)
    docker("kill", *master)
    killed = time.time()
    wait_until(
        lambda: (now := stack.containers("master")) and now != master,
        timeout=90,
        what="Swarm to restart the master",
    )
    new_master = stack.containers("master")[0]
    # Then the job resumes and ends with NumPy's answer, every shard merged exactly once
    result = stack.cli("result", job, "--timeout", "180", timeout=240)["result"]
    data = synthetic.rows(SyntheticSpec(rows=ROWS, cols=COLS, seed=SEED), 0, ROWS)
    assert result["rows"] == ROWS
    np.testing.assert_allclose(result["power_sum"], np.abs(data).sum(axis=0), rtol=1e-9)
    status = stack.cli("status", job, "--shards")
    assert [s["merged"] for s in status["shards"]] == [1] * SHARDS
    # And every shard's story lists each of its executions, as the task itself noted them
    _assert_stories_list_every_execution(stack, status, killed)
    # And `why` shows the restart between a shard's attempts, or across the one it cut through
    _assert_why_shows_the_restart(stack, job, status)
    # And work resumed soon after the kill: the restarted master handed out a new shard. The
    # target is 5 s (2.1-4.3 s measured, bench/history/2026-12-06.md); a timed assertion here
    # only guards against the old way back (12.5 s: the first health check 10 s late), since
    # on a loaded 2-core machine the master alone takes 3.6-4.7 s to listen again.
    attempts = [a for s in status["shards"] for a in s["history"]]
    resumed = min(a["started"] for a in attempts if a["started"] > killed) - killed
    restart = status["restarts"][-1]  # the new master's start, by its own clock
    times = stack.timeline(new_master, since=killed) | {"master_up": round(restart - killed, 2)}
    print(f"after the master kill: {times}, first new shard {resumed:.2f} s", file=sys.stderr)
    assert resumed < 9.0, f"work resumed {resumed:.1f} s after the kill: {times}"
    # And workers that joined by scaling ran shards of it
    ran = {a["worker"] for s in status["shards"] for a in s["history"] if a["outcome"] == "ok"}
    assert ran - before, f"no shard ran on a worker added mid-job: {ran} vs {before}"
    # And the 4 workers are back with the restarted master, each healthy by the image's check
    wait_until(lambda: len(stack.cli("workers")) == 4, timeout=90, what="4 workers back")
    wait_until(
        lambda: all(stack.health(c) == "healthy" for c in stack.containers("worker")),
        timeout=60,
        what="every worker container healthy",
    )
    assert [stack.health(c) for c in stack.containers("master")] == ["healthy"]


def _executions(stack: Stack) -> dict[int, list[tuple[str, float]]]:
    """Each shard's executions (worker, start), from the lines the task wrote as it started."""
    text = docker("exec", stack.containers("master")[0], "cat", RUNS)
    found: dict[int, list[tuple[str, float]]] = defaultdict(list)
    for line in text.splitlines():
        first_row, worker, at = line.split()
        shard, off = divmod(int(first_row), ROWS // SHARDS)
        assert off == 0, f"a shard starting at row {first_row}: not an equal split"
        found[shard].append((worker, float(at)))
    return found


def _at_the_gate(stack: Stack) -> bool:
    """Whether a gated shard started (it waits at the gate, then runs through the kill)."""
    return any(shard * (ROWS // SHARDS) >= GATE_ROW for shard in _executions(stack))


def _cancel_on_the_way(attempt: dict[str, Any], at: float) -> bool:
    """A superseded attempt its worker took up after the master let it go, before the cancel."""
    return attempt["outcome"] == "superseded" and at <= attempt["ended"] + CANCEL_TRIP


def _superseded_unstarted(attempt: dict[str, Any]) -> bool:
    return attempt["outcome"] == "superseded" and attempt["ran"] is None


def _assert_stories_list_every_execution(
    stack: Stack, status: dict[str, Any], killed: float
) -> None:
    """Each execution is one attempt of its shard's story: same worker, started by then (its
    lease's trip, under load up to seconds, before the task's own start), not ended before it
    (but for a superseded backup its worker took up while the cancel was on the way).
    An attempt no execution matches can only be a lease its worker died before starting or
    gave back, or a backup superseded before it started. Some executions ran through the
    kill."""
    executions = _executions(stack)
    across, near = 0, []  # near: (shard, start, end) of executions within 5 s of the kill
    for shard in status["shards"]:
        ran, left = executions.get(shard["index"], []), list(shard["history"])
        assert ran, f"shard {shard['index']} never ran, by the task's own notes: {shard}"
        for worker, at in sorted(ran, key=lambda r: r[1]):
            match = [
                a for a in left
                if a["worker"] == worker and a["started"] <= at + SLACK
                and (a["ended"] is None or a["ended"] >= at or _cancel_on_the_way(a, at))
            ]  # fmt: skip
            assert match, f"an execution on {worker} at {at:.3f} is not in the story: {shard}"
            left.remove(match[0])
            across += at < killed < match[0]["ended"]
            if abs(at - killed) < 5 or abs(match[0]["ended"] - killed) < 5:
                near.append((shard["index"], round(at - killed, 2), match[0]))
        # (a backup superseded before its child took it up never ran either: `ran` is None)
        unrun = [a for a in left if a["outcome"] in UNRUN or _superseded_unstarted(a)]
        assert unrun == left, f"attempts that never ran: {shard}"
        numbers = [a["attempt"] for a in shard["history"]]
        assert len(set(numbers)) == len(numbers), f"attempt numbers twice: {shard}"
    assert across, f"no execution was running when the master was killed: {near}"
    print(f"stories: {sum(map(len, executions.values()))} executions of {SHARDS} shards, "
          f"{across} running at the master's kill", file=sys.stderr)  # fmt: skip


def _assert_why_shows_the_restart(stack: Stack, job: str, status: dict[str, Any]) -> None:
    """`shardmill why` of a shard whose story the restart cuts: a line between two attempts,
    or a note on the attempt it ran through (none such when every shard ran on one side)."""
    restart = status["restarts"][-1]
    for shard in status["shards"]:
        spans = [(a["started"], a["ended"]) for a in shard["history"]]
        if any(start < restart < end for start, end in spans):
            expected = "across the master's restart at"
        elif min(spans)[0] < restart < max(spans)[0]:
            expected = "-- the master restarted at"
        else:
            continue
        story = docker("exec", stack.client, "shardmill", "why", job, str(shard["index"]))
        assert expected in story, story
        return
    print("no shard's story has an attempt on each side of the restart", file=sys.stderr)
