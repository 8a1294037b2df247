"""Reports and traces of jobs that ran before a master `kill -9` and restart: still complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import FAST, cluster_env, run_cli

from shardmill import LocalCluster

SHARDS = 8
PHASES = {"X", "M"}


def check_chrome_trace(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON Object Format of the Trace Event Format: a `traceEvents` list whose events carry
    name, ph, pid, tid and ts (µs); complete events ("X") a non-negative dur, metadata events
    ("M") a process or thread name. Returns the complete events."""
    assert isinstance(trace["traceEvents"], list)
    assert trace.get("displayTimeUnit", "ms") in ("ms", "ns")
    named: dict[tuple[int, int], str] = {}
    complete = []
    for e in trace["traceEvents"]:
        assert e["ph"] in PHASES, e
        assert isinstance(e["name"], str) and isinstance(e["pid"], int)
        assert isinstance(e["tid"], int) and isinstance(e["ts"], int | float)
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name", "process_sort_index")
            named[(e["pid"], e["tid"] if e["name"] == "thread_name" else -1)] = e["name"]
        else:
            assert isinstance(e["dur"], int | float) and e["dur"] >= 0 and e["ts"] >= 0
            complete.append(e)
    for e in complete:  # every track is named: one per worker slot
        assert (e["pid"], -1) in named and (e["pid"], e["tid"]) in named
    return complete


def test_report_and_trace_survive_a_master_kill(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    with LocalCluster(
        workers=2, imports=["sm_tasks"], env=cluster_env(), state_dir=tmp_path / "state", **FAST
    ) as cluster:
        with cluster.client() as client:
            args = [(str(runs), f"f{i}", i) for i in range(SHARDS)]
            job = client.map("sm_tasks:flaky", args, chunk_size=1, max_attempts=2)
            assert job.result(timeout=60) == [i * 10 for i in range(SHARDS)]
        before = tmp_path / "before.json"
        assert run_cli("trace", job.id, "-o", str(before), master=cluster).returncode == 0

        cluster.kill_master()
        cluster.start_master()
        cluster.wait_for_workers(2)

        after, report = tmp_path / "after.json", tmp_path / "report.html"
        for cmd, path in (("trace", after), ("report", report)):
            proc = run_cli(cmd, job.id, "-o", str(path), master=cluster)
            assert proc.returncode == 0, proc.stderr
            assert f"wrote the {cmd} of job {job.id}" in proc.stderr

    events = check_chrome_trace(json.loads(after.read_text()))
    # Every shard failed once and then ran: two attempts each, all still there, unchanged.
    assert len(events) == 2 * SHARDS
    assert sorted(e["args"]["outcome"] for e in events) == ["error"] * SHARDS + ["ok"] * SHARDS
    assert events == check_chrome_trace(json.loads(before.read_text()))

    page = report.read_text()
    assert "http://" not in page and "https://" not in page  # opens with no network
    assert "<script" not in page
    assert f"Job {job.id}" in page and "Karp" in page and "Flatt metric" in page
    assert page.count('data-outcome="ok"') == SHARDS
    assert page.count('data-outcome="error"') == SHARDS
    for shard in range(SHARDS):  # each retried shard's story, with the error it raised
        assert f"<h3>Shard {shard}: done</h3>" in page
        assert f"<td>RuntimeError: first attempt of f{shard} fails</td>" in page
