"""What an attempt printed: kept in its story and shown by `why`, `logs` and the report, even
when its process was SIGKILLed mid-shard; and printed live with `echo=True`, `watch --logs`."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_json, cluster_env, run_cli, wait_until

from shardmill import LocalCluster
from shardmill.errors import JobFailed


def _failed_job(cluster: LocalCluster, function: str, x: int) -> str:
    with cluster.client() as client:
        job = client.map(f"sm_tasks:{function}", [(x,)], chunk_size=1, max_attempts=1)
        with pytest.raises(JobFailed):
            job.result(timeout=60)
        return job.id


def test_a_task_that_prints_then_raises_shows_both_everywhere(cluster: LocalCluster) -> None:
    # Given a map task that prints a line, then raises
    job = _failed_job(cluster, "print_then_raise", 7)
    # When its shard's story is asked for
    story = cli_json("why", job, "0", master=cluster)
    # Then its one attempt holds what it printed, and the traceback of what it raised
    (attempt,) = story["history"]
    assert attempt["output"] == "computing shard input 7\n"
    assert "ValueError: bad value 7" in attempt["error"]["traceback"]
    human = run_cli("why", job, "0", master=cluster).stdout
    assert "computing shard input 7" in human and "ValueError: bad value 7" in human
    # And `logs` prints both, for the shard and for the whole job alike
    for args in ((job, "0"), (job,), (job, "0", "--attempt", "1")):
        logs = run_cli("logs", *args, master=cluster)
        assert logs.returncode == 0, logs.stderr
        assert "==> shard 0 attempt 1 on" in logs.stdout
        printed = logs.stdout.index("computing shard input 7")
        assert printed < logs.stdout.index("ValueError: bad value 7")
    assert cli_json("logs", job, master=cluster)[0]["output"] == "computing shard input 7\n"
    # And an attempt that does not exist is named, with where to look
    missing = run_cli("logs", job, "0", "--attempt", "2", master=cluster)
    assert missing.returncode != 0 and "no attempt 2" in missing.stderr
    # And the report shows both
    report = run_cli("report", job, "-o", "-", master=cluster).stdout
    assert "computing shard input 7" in report and "ValueError: bad value 7" in report


def test_a_child_killed_after_printing_still_shows_what_it_printed(
    cluster: LocalCluster,
) -> None:
    # Given a task that prints, then is SIGKILLed mid-shard
    job = _failed_job(cluster, "print_then_kill", 3)
    # When its output is asked for
    (entry,) = cli_json("logs", job, "0", master=cluster)
    # Then the crash is the failure, and what it printed before it is kept
    assert entry["error"]["signal"] == "SIGKILL"
    assert entry["output"] == "about to die on 3\n"


def test_a_successful_attempt_keeps_what_it_printed(cluster: LocalCluster) -> None:
    # Given a task that writes to stdout through print and to fd 2 directly
    with cluster.client() as client:
        job = client.map("sm_tasks:chatty", [(1,), (2,)], chunk_size=1)
        assert job.result(timeout=60) == [1, 2]
        # Then each shard's attempt holds its own lines, in the order written, and no other's
        info = client.status(job.id, shards=True)
    outputs = [s.history[-1].output for s in info.shards or []]
    assert outputs == ["hello from 1\nraw stderr 1\n", "hello from 2\nraw stderr 2\n"]


def _read_until(proc: subprocess.Popen[bytes], text: str, seen: bytearray) -> str:
    """The process's stdout so far once it holds `text`; fails the test at a deadline."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()

    def found() -> bool:
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen.extend(chunk)
        return text in seen.decode()

    wait_until(found, timeout=30, what=f"{text!r} on the process's stdout")
    return seen.decode()


def test_echo_prints_task_output_before_the_job_ends(cluster: LocalCluster, tmp_path: Path) -> None:
    # Given a client mapping with echo=True a task that prints, then waits for our go
    flag = tmp_path / "go"
    script = (
        "from shardmill import Client\n"
        f"job = Client().map('sm_tasks:print_and_wait', [(1, {str(flag)!r})], echo=True)\n"
        "print('result', job.result(timeout=60), flush=True)\n"
    )
    env = {**cluster_env(), **cluster.client_env()}
    cmd = [sys.executable, "-c", script]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env) as proc:
        seen = bytearray()
        # Then its first line shows, prefixed with shard and worker, while the job still runs
        out = _read_until(proc, "waiting 1\n", seen)
        assert re.search(r"^\[shard 0 \S+\] waiting 1$", out, re.M), out
        assert "result" not in out
        # And when the task goes on, the rest follows, then the result
        flag.touch()
        out = _read_until(proc, "result [1]", seen)
        assert out.index("] done 1") < out.index("result [1]")
        assert proc.wait(timeout=30) == 0


def test_watch_logs_prints_a_running_task_output(cluster: LocalCluster, tmp_path: Path) -> None:
    # Given a job whose task has printed a line and now waits, nobody watching
    flag = tmp_path / "go"
    with cluster.client() as client:
        job = client.map("sm_tasks:print_and_wait", [(2, str(flag))])
        wait_until(lambda: job.progress().shards_running == 1, what="the shard to start")
        env = {**cluster_env(), **cluster.client_env()}
        cmd = [sys.executable, "-m", "shardmill", "watch", job.id, "--logs"]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env) as proc:
            # When `watch --logs` starts, then what it printed so far shows, before the end
            seen = bytearray()
            _read_until(proc, "] waiting 2\n", seen)
            flag.touch()
            # And what it prints later, too
            _read_until(proc, "] done 2\n", seen)
            assert proc.wait(timeout=30) == 0
        assert job.result(timeout=30) == [2]
