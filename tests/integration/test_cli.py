"""Every CLI command as a real process against a running cluster; --json parsed."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, cli_json, cluster_env, run_cli, wait_until

from shardmill import LocalCluster, exitcodes
from shardmill.cli.details import stamp


@pytest.fixture
def npy(tmp_path: Path) -> Path:
    path = tmp_path / "d.npy"
    np.save(path, np.random.default_rng(3).normal(size=(20_000, 4)))
    return path


def test_submit_status_jobs_result_workers_why(cluster: LocalCluster, npy: Path) -> None:
    master = cluster
    done_before = sum(w["shards_done"] for w in cli_json("workers", master=master))
    # submit without --wait prints the job id
    job_id = cli_json("submit", "column_stats", str(npy), "--shards", "8", master=master)["job_id"]
    # result waits and prints the merged statistics
    result = cli_json("result", job_id, master=master)["result"]
    data = np.load(npy)
    np.testing.assert_allclose(result["mean"], data.mean(0), rtol=1e-9)
    assert result["count"] == 20_000
    status = cli_json("status", job_id, "--shards", master=master)
    assert status["state"] == "done" and status["shards_done"] == 8
    assert [s["merged"] for s in status["shards"]] == [1] * 8
    jobs = cli_json("jobs", master=master)
    assert [j["job_id"] for j in jobs] == [job_id]
    # status without a job lists them (the same rows; a result a worker resends late, under
    # load, may move a counter between the two calls)
    listed = cli_json("status", master=master)
    assert [(j["job_id"], j["state"], j["shards_done"]) for j in listed] == [
        (j["job_id"], j["state"], j["shards_done"]) for j in jobs
    ]
    assert set(listed[0]) == set(jobs[0])
    workers = cli_json("workers", master=master)
    assert len(workers) == 2
    assert {
        "worker_id",
        "hostname",
        "pid",
        "slots",
        "busy",
        "heartbeat_age",
        "shards_done",
        "shards_failed",
    } <= set(workers[0])
    assert sum(w["shards_done"] for w in workers) == done_before + 8
    story = cli_json("why", job_id, "3", master=master)
    assert story["state"] == "done" and story["history"][0]["outcome"] == "ok"
    # prune asks for an age: never every finished job by omission
    bare = run_cli("jobs", "--prune", master=master)
    assert bare.returncode == exitcodes.USAGE and "--older-than SECONDS" in bare.stderr
    assert cli_json("jobs", "--prune", "--older-than", "3600", master=master) == []
    pruned = cli_json("jobs", "--prune", "--older-than", "0", master=master)
    assert [j["job_id"] for j in pruned] == [job_id] and cli_json("jobs", master=master) == []


def test_jobs_last_lists_only_the_newest_finished(cluster: LocalCluster) -> None:
    # Given two jobs finished one after the other
    ids = []
    with cluster.client() as client:
        for i in range(2):
            job = client.map("sm_tasks:square", [(i,)])
            job.result()
            ids.append(job.id)
    # When `jobs --last 1` asks for the most recently finished only
    listed = cli_json("jobs", "--last", "1", master=cluster)
    # Then that is the newer one, and a person is told how many more there are
    assert [j["job_id"] for j in listed if j["state"] != "running"] == [ids[1]]
    out = run_cli("jobs", "--last", "1", master=cluster).stdout
    assert ids[1] in out and ids[0] not in out and "the 1 most recently finished of" in out


def test_human_output_and_wait_progress(cluster: LocalCluster, npy: Path) -> None:
    master = cluster
    proc = run_cli("submit", "column_stats", str(npy), "--shards", "4", "--wait", master=master)
    assert proc.returncode == 0, proc.stderr
    assert "4/4" in proc.stdout and "shards" in proc.stdout  # the progress bar's last frame
    assert "mean" in proc.stdout and "rows: 20000" in proc.stdout
    for cmd in (["jobs"], ["workers"]):
        out = run_cli(*cmd, master=master)
        assert out.returncode == 0 and out.stdout.strip(), out.stderr
    watch = run_cli("watch", cli_json("jobs", master=master)[0]["job_id"], master=master)
    assert watch.returncode == 0 and "done" in watch.stdout


def test_tables_fit_80_columns_with_whole_ids_and_true_numbers(
    cluster: LocalCluster, npy: Path
) -> None:
    # Given a finished job with a long name, and a terminal 80 columns wide
    master = cluster
    name = "a rather long job name that would not fit anywhere"
    args = ("submit", "column_stats", str(npy), "--shards", "6", "--name", name)
    job_id = cli_json(*args, "--wait", master=master)["job_id"]
    narrow = {**cluster_env(), **cluster.client_env(), "COLUMNS": "80"}
    # When jobs, workers and status --shards print tables for people
    for cmd in (["jobs"], ["workers"], ["status", job_id, "--shards"]):
        out = run_cli(*cmd, env=narrow)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        # Then no line passes 80 columns, and ids are whole
        assert max(len(line) for line in lines) <= 80, out.stdout
        assert job_id in out.stdout or cmd == ["workers"]
    workers = {w["worker_id"] for w in cli_json("workers", master=master)}
    narrow_workers = run_cli("workers", env=narrow).stdout
    assert all(w in narrow_workers for w in workers)
    # And the columns left out are named, with the width that shows them all
    note = " ".join(narrow_workers.split("columns hidden to fit 80: ")[1].split())
    assert note.startswith("host, pid") and "--json" in note, narrow_workers
    # (a few columns more: a heartbeat's age or a round trip may gain a digit meanwhile)
    width = int(note.split("COLUMNS=")[1].rstrip(")"))
    wide = {**narrow, "COLUMNS": str(width + 8)}
    everything = run_cli("workers", env=wide).stdout
    assert "hidden" not in everything and "host" in everything and "shuffle" in everything
    # And a done shard names the worker that ran it, as `why` does
    status = run_cli("status", job_id, "--shards", env=narrow).stdout
    shard_rows = [line.split() for line in status.splitlines() if line.split()[:1] == ["0"]]
    assert shard_rows and shard_rows[0][3] in workers
    # And watching the finished job shows its own rate and time, not the watcher's
    info = cli_json("status", job_id, master=master)
    seconds = info["finished_at"] - info["started_at"]
    watch = run_cli("watch", job_id, env=narrow).stdout
    assert f"{6 / seconds:.1f} shards/s" in watch, watch
    assert f"{info['finished_at'] - info['submitted_at']:.2f} s" in watch


def test_submit_wait_json_and_watch_json(cluster: LocalCluster, npy: Path) -> None:
    master = cluster
    out = cli_json("submit", "column_stats", str(npy), "--wait", master=master)
    assert out["result"]["count"] == 20_000
    lines = run_cli("watch", out["job_id"], "--json", master=master).stdout.splitlines()
    assert json.loads(lines[-1])["state"] == "done"
    # And a reader gone before the first line (`... --json | head -0`) gets no traceback,
    # whether the command writes as it goes (watch) or at its exit (stdout block-buffered)
    env = {**cluster_env(), **cluster.client_env()}
    env.pop("PYTHONUNBUFFERED", None)
    for cmd in (["watch", out["job_id"]], ["status", out["job_id"], "--shards"], ["jobs"]):
        closed = _into_a_closed_pipe(*cmd, "--json", env=env)
        assert (closed.returncode, closed.stderr) == (exitcodes.ERROR, ""), closed.stderr


def _into_a_closed_pipe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`shardmill ARGS` writing into a pipe whose reader has already gone."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(
            [sys.executable, "-m", "shardmill", *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)


def test_cancel_a_running_job(cluster: LocalCluster, tmp_path: Path) -> None:
    master = cluster
    flag = tmp_path / "never"
    with cluster.client() as client:
        job = client.map("sm_tasks:wait_for_file", [(str(flag),) for _ in range(6)], chunk_size=1)
        wait_until(lambda: job.status().shards_running == 2, what="two shards running")
    out = cli_json("cancel", job.id, master=master)
    assert out["state"] == "cancelled"
    proc = run_cli("result", job.id, master=master)
    assert proc.returncode == exitcodes.CANCELLED and "cancelled" in proc.stderr
    # watching it then, in a pipe or on a terminal, ends without an ETA
    watch = run_cli("watch", job.id, master=master)
    assert watch.returncode == exitcodes.CANCELLED, watch.stderr
    assert watch.stdout.splitlines()[-1].startswith(f"{job.id} cancelled"), watch.stdout
    on_tty = _on_a_terminal("watch", job.id, env={**cluster_env(), **cluster.client_env()})
    assert f"{job.id} cancelled" in on_tty
    assert "ETA" not in watch.stdout + on_tty, watch.stdout + on_tty
    # the workers are free again at once: a new job runs
    with cluster.client() as client:
        assert client.call("sm_tasks:square", 4, timeout=30) == 16
        assert all(w.busy == 0 for w in client.workers())


def _on_a_terminal(*args: str, env: dict[str, str]) -> str:
    """What `shardmill ARGS` writes to a (pseudo-)terminal, where rich draws its live bar; for
    short outputs only: the child writes into the terminal's buffer until it exits."""
    leader, follower = pty.openpty()
    try:
        try:
            subprocess.run(
                [sys.executable, "-m", "shardmill", *args],
                stdin=subprocess.DEVNULL,
                stdout=follower,
                stderr=follower,
                env={**env, "COLUMNS": "120", "TERM": "xterm"},
                timeout=60,
                check=False,
            )
        finally:
            os.close(follower)
        chunks = []
        while select.select([leader], [], [], 0)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: all read, and the terminal's other end is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(leader)


def test_exit_codes_name_the_problem(cluster: LocalCluster, tmp_path: Path) -> None:
    master = cluster
    missing = run_cli("status", "nosuchjob", master=master)
    assert missing.returncode == exitcodes.NOT_FOUND and "no job 'nosuchjob'" in missing.stderr
    bad = run_cli("submit", "column_stats", str(tmp_path / "x.npy"), master=master)
    assert bad.returncode == exitcodes.BAD_SPEC and "does not exist" in bad.stderr
    gone = run_cli("jobs", "--connect-timeout", "0.3", master="tcp://127.0.0.1:9")
    assert gone.returncode == exitcodes.UNREACHABLE and "SHARDMILL_MASTER" in gone.stderr
    assert run_cli("health", "--master", cluster.client_address, master=cluster).returncode == 0
    sick = run_cli("health", "--file", str(tmp_path / "none"))
    assert sick.returncode == exitcodes.UNHEALTHY


def test_health_files_follow_each_role(tmp_path: Path) -> None:
    """The image's HEALTHCHECK is a bare `shardmill health`: it must pass for a serving master
    and a worker that hears it, and fail once a role stops (its file goes stale)."""
    files = {"MASTER": tmp_path / "master.health", "WORKER": tmp_path / "worker.health"}
    env = cluster_env() | {f"SHARDMILL_{r}_HEALTH_FILE": str(f) for r, f in files.items()}
    alive = tmp_path / "worker.alive"  # Kubernetes' worker liveness probe reads this one
    env["SHARDMILL_WORKER_ALIVE_FILE"] = str(alive)
    with LocalCluster(1, heartbeat_interval=0.05, heartbeat_liveness=10, env=env) as cluster:

        def health(role: str, *extra: str) -> subprocess.CompletedProcess[str]:
            return run_cli(
                "health", *extra, env=cluster_env() | {"SHARDMILL_HEALTH_FILE": str(files[role])}
            )

        for role in files:
            wait_until(lambda r=role: health(r).returncode == 0, what=f"{role} health file fresh")
        assert "master pid" in files["MASTER"].read_text()
        cluster.kill_master()
        stale = wait_until(
            lambda: (p := health("MASTER", "--max-age", "0.5")).returncode and p,
            what="master health file stale",
        )
        assert stale.returncode == exitcodes.UNHEALTHY and "last touched" in stale.stderr
        # the worker no longer hears a master either
        wait_until(lambda: health("WORKER", "--max-age", "0.5").returncode, what="worker stale")
        # yet its loop turns: its alive file stays fresh through the master's outage
        for _ in range(2):  # fresh now, and again after the file's last age has passed
            since = alive.stat().st_mtime
            wait_until(lambda s=since: alive.stat().st_mtime > s, what="alive file touched")
        assert run_cli("health", "--file", str(alive), "--max-age", "0.5").returncode == 0
    missing = run_cli("health", env=cluster_env() | {"SHARDMILL_HEALTH_FILE": str(tmp_path / "x")})
    assert missing.returncode == exitcodes.UNHEALTHY and "does not exist" in missing.stderr


def test_failed_job_exit_code_and_message(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        job = client.map("sm_tasks:boom", [(1,)], max_attempts=2)
    proc = run_cli("result", job.id, master=cluster)
    assert proc.returncode == exitcodes.JOB_FAILED
    assert "shard 0" in proc.stderr and "boom on 1" in proc.stderr
    assert "attempt 2" in proc.stderr and "next step" in proc.stderr
    # `status JOB` shows people what the jobs table does not: owner, timing, failed attempts,
    # lost workers
    info = cli_json("status", job.id, master=cluster)
    status = run_cli("status", job.id, master=cluster)
    assert status.returncode == 0, status.stderr
    facts = _facts(status.stdout)
    assert facts["owner"] == info["owner"] != ""
    assert facts["submitted"].endswith(stamp(info["submitted_at"]))
    assert facts["started"].startswith(stamp(info["started_at"]))
    took = info["finished_at"] - info["submitted_at"]
    ran = info["finished_at"] - info["started_at"]
    assert facts["failed"] == f"{stamp(info['finished_at'])} (+{took:.2f} s, ran {ran:.2f} s)"
    assert facts["failed attempts"].startswith("2, the last: shard 0 attempt 2 on ")
    assert facts["lost workers"] == "none"


def _facts(stdout: str) -> dict[str, str]:
    """`status JOB`'s lines of "label  value" (a label of words, then two spaces or more)."""
    pairs = (re.match(r"(\S+(?: \S+)*) {2,}(.*)$", line) for line in stdout.splitlines())
    return {m[1]: m[2] for m in pairs if m}


def test_console_script_and_module_entry_points() -> None:
    exe = shutil.which("shardmill")
    assert exe is not None, "the shardmill console script is not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("shardmill ")
    for module in ("shardmill.master", "shardmill.worker"):
        help_text = subprocess.run(
            ["python", "-m", module, "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "--log-level" in help_text


def test_worker_refuses_a_module_it_cannot_find() -> None:
    proc = run_cli("worker", "--import", "no_such_module_xyz", "--master", "tcp://127.0.0.1:9")
    assert proc.returncode == exitcodes.CONFIG
    assert "no_such_module_xyz" in proc.stderr


def test_bad_input_gets_one_clear_line_and_the_master_keeps_serving(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    master = cluster
    # A CSV that is not UTF-8: a spec error naming the file, its line and the fix
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("city,temp\noslo,1.5\nmünchen,2.5\n".encode("latin-1"))
    csv = run_cli("submit", "column_stats", str(latin), "--wait", master=master)
    assert csv.returncode == exitcodes.BAD_SPEC, csv.stderr
    assert f"{latin} is not UTF-8 text (line 3" in csv.stderr and "iconv" in csv.stderr
    assert "master error" not in csv.stderr
    # A master address that is not one: a settings error, no traceback
    garbage = run_cli("jobs", "--master", "garbage-address")
    assert garbage.returncode == exitcodes.CONFIG, garbage.stderr
    assert "'garbage-address' is not a ZeroMQ address" in garbage.stderr
    # A master told to import a module that does not exist: one line, no traceback
    nomod = run_cli("master", "--import", "shardmill_no_such_mod", "--port", "0", "--insecure")
    assert nomod.returncode == exitcodes.CONFIG
    assert "cannot find module(s) shardmill_no_such_mod" in nomod.stderr
    for proc in (csv, garbage, nomod):
        assert "Traceback" not in proc.stderr, proc.stderr
    # And the master still serves
    assert cli_json("workers", master=master)


def test_a_bad_csv_followed_without_a_terminal(cluster: LocalCluster, tmp_path: Path) -> None:
    # Given a CSV with a word where `--dtype b=float64` promises numbers
    bad = tmp_path / "a-csv-whose-error-line-passes-eighty-columns.csv"
    bad.write_text("a,b\n1,2\n3,x\n5,6\n")
    # When it is submitted and followed with stdout a pipe, not a terminal
    args = ("column_stats", str(bad), "--dtype", "b=float64", "--shards", "2", "--wait")
    proc = run_cli("submit", *args, master=cluster)
    assert proc.returncode == exitcodes.JOB_FAILED, proc.stderr
    # Then every line of the job's error is on stdout whole, not wrapped at 80 columns
    lines = proc.stdout.splitlines()
    error = proc.stderr.removeprefix("shardmill: ").splitlines()
    assert len(error) >= 3 and all(line in lines for line in error), proc.stdout
    # And the job's last line is whole: its rate and time, and no ETA once it ended
    job_id = lines[0].split()[1]
    last = [line for line in lines if line.startswith(f"{job_id} failed")]
    assert last and last[-1].endswith(" s") and "shards/s" in last[-1], proc.stdout
    assert "ETA" not in last[-1]
    # And the error names the CLI flag beside the Python field, and says it is not retried
    assert "`--dtype b=str`" in proc.stderr and "dtypes={'b': 'str'}" in proc.stderr
    assert "bad input is not retried" in proc.stderr


def test_empty_tables_say_what_to_do() -> None:
    # Given a master with no workers and no jobs
    with LocalCluster(0, env=cluster_env(), **FAST) as bare:
        # When jobs and workers are listed for people
        jobs = run_cli("jobs", master=bare)
        workers = run_cli("workers", master=bare)
    # Then each says what to do instead of printing bare headers
    assert jobs.returncode == workers.returncode == 0, jobs.stderr + workers.stderr
    assert jobs.stdout.startswith("no jobs: submit one with `shardmill submit "), jobs.stdout
    assert workers.stdout.startswith("no workers: start one with `shardmill worker "), (
        workers.stdout
    )
