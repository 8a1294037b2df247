"""Pipelines on a real cluster: every result checked against NumPy on the same data."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import FAST, cli_json, cluster_env, run_cli, wait_until
from shared import warm

from shardmill import Client, JobCancelled, LocalCluster, Pipeline
from shardmill.pipeline import PipelineFailed, read_parts
from shardmill.wire.protocol import PipelineInfo


def _pipes_cluster(shuffle_dir: Path | None = None) -> LocalCluster:
    env = cluster_env()
    if shuffle_dir is not None:  # each worker keeps its map outputs in shuffle_dir/WORKER_ID
        env["SHARDMILL_WORKER_SHUFFLE_DIR"] = str(shuffle_dir)
    return LocalCluster(workers=2, imports=["sm_tasks", "sm_pipes"], env=env, **FAST)


@pytest.fixture(scope="module")
def shuffle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shuffle")


@pytest.fixture(scope="module")
def pipes(shuffle_dir: Path) -> Iterator[LocalCluster]:
    with _pipes_cluster(shuffle_dir) as c:
        yield warm(c)


@pytest.fixture(scope="module")
def client(pipes: LocalCluster) -> Iterator[Client]:
    with pipes.client() as c:
        yield c


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    # 1,000,000 events of 500,000 users: a group-by with 500,000 distinct keys.
    rng = np.random.default_rng(7)
    data = np.stack([rng.integers(0, 500_000, 1_000_000), rng.integers(0, 100, 1_000_000)], axis=1)
    path = tmp_path_factory.mktemp("pipes") / "events.npy"
    np.save(path, data)
    return path, data


def _expected(data: np.ndarray) -> dict[str, np.ndarray]:
    users, inv = np.unique(data[:, 0], return_inverse=True)
    amount = data[:, 1]
    total = np.zeros(len(users), dtype=np.int64)
    np.add.at(total, inv, amount)
    n = np.bincount(inv)
    lo = np.full(len(users), np.iinfo(np.int64).max)
    hi = np.full(len(users), np.iinfo(np.int64).min)
    np.minimum.at(lo, inv, amount)
    np.maximum.at(hi, inv, amount)
    return {"user": users, "total": total, "n": n, "mean": total / n, "lo": lo, "hi": hi}


def _by_user(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.argsort(table["user"], kind="stable")
    return {k: v[order] for k, v in table.items()}


def test_groupby_500k_keys_then_sort(
    pipes: LocalCluster, client: Client, events: tuple[Path, np.ndarray], shuffle_dir: Path
) -> None:
    # Given a million events of 500,000 users
    path, data = events
    p = (
        Pipeline.read(path, shards=8)
        .map("sm_pipes:events")
        .groupby("user")
        .agg(
            total=("amount", "sum"),
            n=("amount", "count"),
            mean=("amount", "mean"),
            lo=("amount", "min"),
            hi=("amount", "max"),
        )
        .sort("total", descending=True)
        .collect()
    )
    # When it runs: group-by with the combiner, then a range-partitioned sort
    job = client.run(p)
    out = job.result(timeout=120)
    # Then every aggregate equals NumPy's, and the rows come in descending order of total
    want = _expected(data)
    assert len(out["user"]) == len(want["user"]) > 400_000
    assert np.all(np.diff(out["total"]) <= 0)
    got = _by_user(out)
    for col in ("user", "total", "n", "lo", "hi"):
        assert np.array_equal(got[col], want[col]), col
    assert np.allclose(got["mean"], want["mean"])
    stages = job.progress()
    assert [s.done for s in stages] == [8, 8, 8]
    # `status` and `jobs` show it by stage
    status = run_cli("status", job.id, master=pipes)
    assert status.returncode == 0, status.stderr
    assert "groupby user" in status.stdout and "8/8" in status.stdout
    assert cli_json("status", job.id, master=pipes)["stages"][1]["bytes_fetched"] > 0
    assert job.id in run_cli("jobs", master=pipes).stdout
    # the workers dropped the pipeline's map outputs once it was done
    assert len(list(shuffle_dir.iterdir())) == 2  # a directory per worker ...
    wait_until(lambda: not list(shuffle_dir.glob("*/*")), what="the outputs dropped")
    # the combiner: fewer rows cross the network than were read (keys repeat within a shard)
    assert stages[1].bytes_fetched == stages[0].bytes_shuffled > 0


def test_sort_ascending_and_write(
    client: Client, events: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, data = events
    p = Pipeline.read(path, shards=4).map("sm_pipes:events").sort("user").write(tmp_path / "out")
    result = client.run(p).result(timeout=120)
    table = read_parts(result["files"])
    assert result["rows"] == len(data)
    # stable: equal users keep the input order of their amounts
    order = np.argsort(data[:, 0], kind="stable")
    assert np.array_equal(table["user"], data[order, 0])
    assert np.array_equal(table["amount"], data[order, 1])


def test_inner_and_left_join(client: Client) -> None:
    # Given orders (user, amount) and users (user, name) with duplicates on both sides
    rng = np.random.default_rng(3)
    left = {"user": rng.integers(0, 50, 2000), "amount": rng.integers(0, 9, 2000)}
    names = np.array([f"u{i}" for i in range(0, 40)] * 2)  # users 40..49 have no name
    right = {"user": np.arange(80) % 40, "name": names}
    orders = Pipeline.from_tables([{k: v[i::3] for k, v in left.items()} for i in range(3)])
    users = Pipeline.from_tables([{k: v[i::2] for k, v in right.items()} for i in range(2)])
    inner = client.run(orders.join(users, on="user", partitions=5).collect()).result(timeout=60)
    leftj = client.run(orders.join(users, on="user", how="left").collect()).result(timeout=60)
    # Then the inner join has each order once per matching name (2 here), none for 40..49
    matched = left["user"] < 40
    assert len(inner["user"]) == 2 * int(matched.sum())
    assert np.array_equal(inner["name"], np.char.add("u", inner["user"].astype(str)))
    pairs = np.stack([inner["user"], inner["amount"]], axis=1).tolist()
    want = np.stack([left["user"], left["amount"]], axis=1)[matched].tolist() * 2
    assert sorted(pairs) == sorted(want)
    # and the left join keeps every unmatched order once, with an empty name
    assert len(leftj["user"]) == 2 * int(matched.sum()) + int((~matched).sum())
    assert sorted(leftj["user"][leftj["name"] == ""].tolist()) == sorted(
        left["user"][~matched].tolist()
    )


def test_filter_repartition_map_partitions(client: Client) -> None:
    rng = np.random.default_rng(5)
    table = {"user": rng.integers(0, 30, 900), "amount": rng.integers(0, 100, 900)}
    src = Pipeline.from_tables([{k: v[i::3] for k, v in table.items()} for i in range(3)])
    p = (
        src.filter("sm_pipes:big")
        .repartition("user", partitions=4)
        .map_partitions("sm_pipes:slow_count")
    )
    out = client.run(p.collect()).result(timeout=60)
    keep = table["amount"] >= 50
    users, counts = np.unique(table["user"][keep], return_counts=True)
    got = _by_user(out)
    assert np.array_equal(got["user"], users)  # every key in one partition: counted once
    assert np.array_equal(got["n"], counts)


@pytest.mark.parametrize(
    ("step", "says"),
    [
        ("sm_pipes:ragged", "columns of unequal length (a=3, b=4)"),
        ("sm_pipes:not_a_table", "returned list, not a table"),
        ("sm_pipes:float_key", "key column 'user' has dtype float64, which cannot be a key"),
    ],
)
def test_bad_tables_fail_with_one_clear_line(client: Client, step: str, says: str) -> None:
    src = Pipeline.from_tables([{"user": np.arange(4), "amount": np.arange(4)}])
    p = src.map(step).groupby("user").agg(total=("amount", "sum")).collect()
    with pytest.raises(PipelineFailed) as e:
        client.run(p).result(timeout=60)
    first = str(e.value).splitlines()[0]
    assert first.startswith("stage 0 (1 tables | map ") and "shard 0 failed" in first
    assert says in first


def test_missing_key_column_named(client: Client) -> None:
    src = Pipeline.from_tables([{"user": np.arange(4), "amount": np.arange(4)}])
    with pytest.raises(PipelineFailed, match="key column 'customer' is missing"):
        client.run(src.groupby("customer").agg(n=("amount", "count"))).result(timeout=60)


def _kill_mid_reduce(
    cluster: LocalCluster, p: Pipeline, done: int = 0
) -> tuple[PipelineInfo, Any, dict[int, str]]:
    """Run `p`, SIGKILL the second worker once the map outputs exist and `done` shards of the
    reduce ended; returns the pipeline's end, its result, and which holder had each map output
    before the kill."""
    with cluster.client() as own:
        job = own.run(p, fetch_timeout=5.0)
        jobs = wait_until(lambda: job.progress()[1].jobs, timeout=60, what="the reduce stage")
        wait_until(lambda: own.status(jobs[0]).shards_done >= done, what=f"{done} reduced")
        held = dict(enumerate(job.progress()[0].holders))
        os.kill(cluster.workers[1].pid, signal.SIGKILL)
        out = job.result(timeout=120)
        return job.status(), out, held


def test_worker_killed_mid_shuffle_recomputes_only_its_outputs() -> None:
    # Given a fresh cluster and a pipeline whose reduce stage is slow
    rng = np.random.default_rng(11)
    table = {"user": rng.integers(0, 200, 4000), "amount": rng.integers(0, 100, 4000)}
    src = Pipeline.from_tables([{k: v[i::8] for k, v in table.items()} for i in range(8)])
    p = src.repartition("user", partitions=8).map_partitions("sm_pipes:slow_count").collect()
    with _pipes_cluster() as cluster:
        # When a worker is killed with -9 once the map outputs exist and the reduce has begun
        end, out, held = _kill_mid_reduce(warm(cluster), p)
    # Then the result is exact
    users, counts = np.unique(table["user"], return_counts=True)
    got = _by_user(out)
    assert np.array_equal(got["user"], users) and np.array_equal(got["n"], counts)
    # and only the lost holder's map outputs ran again
    lost = [line for line in end.story if "could not fetch from" in line]
    assert lost, end.story
    found = re.search(r"could not fetch from (tcp://\S+?): stage 0", lost[0])
    assert found is not None, lost
    assert len(set(held.values())) == 2
    again = sorted(s for s, h in held.items() if h == found.group(1))
    assert sorted(end.stages[0].recomputed) == again, end.story
    assert not any("not deterministic" in line for line in end.story)


def test_a_function_that_is_not_deterministic_is_never_mixed() -> None:
    # Given a map step that adds random numbers, and a reduce that sums them per user
    table = {"user": np.arange(4000) % 100, "amount": np.arange(4000)}
    src = Pipeline.from_tables([{k: v[i::8] for k, v in table.items()} for i in range(8)])
    p = (
        src.map("sm_pipes:noisy")
        .repartition("user", partitions=8)
        .map_partitions("sm_pipes:noise_sums")
        .collect()
    )
    with _pipes_cluster() as cluster:
        # When a worker dies mid-reduce and its map outputs are recomputed (other bytes now)
        end, out, _ = _kill_mid_reduce(warm(cluster), p, done=2)
        # Then the reduce stage ran again whole: each partition read one version of each map
        # output, and the rows are all there
        story = "\n".join(end.story)
        assert "are not deterministic" in story and "so no shard mixes the two" in story, story
        assert sorted(end.stages[1].recomputed) == list(range(8)), story
        got = _by_user(out)
        assert np.array_equal(got["user"], np.arange(100)) and np.all(got["n"] == 40)


def test_master_killed_mid_shuffle_resumes(tmp_path: Path) -> None:
    # Given a master with a state directory, and a pipeline whose reduce stage is slow
    rng = np.random.default_rng(13)
    table = {"user": rng.integers(0, 300, 6000), "amount": rng.integers(0, 100, 6000)}
    src = Pipeline.from_tables([{k: v[i::8] for k, v in table.items()} for i in range(8)])
    p = src.repartition("user", partitions=8).map_partitions("sm_pipes:slow_count").collect()
    with LocalCluster(
        workers=2,
        imports=["sm_tasks", "sm_pipes"],
        env=cluster_env(),
        state_dir=tmp_path / "state",
        **FAST,
    ) as cluster:
        own = cluster.client()
        job = own.run(p)
        # When the master is killed with -9 while the reduce stage runs, and started again
        wait_until(lambda: job.progress()[1].jobs, timeout=60, what="the reduce stage")
        cluster.kill_master()
        cluster.start_master()
        out = job.result(timeout=120)
        end = job.status()
        own.close()
    # Then the result is exact, and the map outputs on the live workers were reused
    users, counts = np.unique(table["user"], return_counts=True)
    got = _by_user(out)
    assert np.array_equal(got["user"], users) and np.array_equal(got["n"], counts)
    assert end.stages[0].recomputed == [], end.story
    assert len(end.stages[1].jobs) == 1, end.story  # the same stage job, resumed


def test_tiny_budget_spills_runs_and_gives_the_same_bytes(client: Client) -> None:
    # Given workers whose shuffle memory is 256 KiB (every shard spills many runs, every fetch
    # is paged) and the same pipelines on the module's workers with the default budget
    rng = np.random.default_rng(17)
    data = np.stack([rng.integers(0, 5000, 120_000), rng.integers(0, 100, 120_000)], axis=1)
    parts = [{"user": d[:, 0], "amount": d[:, 1]} for d in np.array_split(data, 4)]
    src = Pipeline.from_tables(parts)
    sort = src.sort("user", partitions=3).collect()
    agg = src.groupby("user", partitions=3).agg(total=("amount", "sum")).collect()
    env = {**cluster_env(), "SHARDMILL_WORKER_SHUFFLE_MEMORY": str(256 << 10)}
    with (
        LocalCluster(workers=2, imports=["sm_tasks", "sm_pipes"], env=env, **FAST) as tiny,
        tiny.client() as own,
    ):
        job = own.run(sort)
        got_sort = job.result(timeout=120)
        spilled = job.progress()[0]
        got_agg = own.run(agg).result(timeout=120)
    # Then the maps spilled in runs (bytes shuffled: the whole table) ...
    assert spilled.bytes_shuffled == data.nbytes
    assert spilled.runs > 2 * 4  # more than two runs a shard
    # ... and the results are byte-identical to the default budget's, and right
    want_sort = client.run(sort).result(timeout=120)
    want_agg = client.run(agg).result(timeout=120)
    for got, want in ((got_sort, want_sort), (got_agg, want_agg)):
        assert got.keys() == want.keys()
        assert all(got[k].tobytes() == want[k].tobytes() for k in got)
    order = np.argsort(data[:, 0], kind="stable")
    assert np.array_equal(got_sort["amount"], data[order, 1])


def test_cancel_stops_the_pipeline(client: Client) -> None:
    table = {"user": np.arange(64) % 8, "amount": np.arange(64)}
    src = Pipeline.from_tables([{k: v[i::8] for k, v in table.items()} for i in range(8)])
    p = src.repartition("user", partitions=8).map_partitions("sm_pipes:slow_count").collect()
    job = client.run(p)
    wait_until(lambda: job.progress()[1].jobs, timeout=60, what="the reduce stage")
    job.cancel()
    with pytest.raises(JobCancelled):
        job.result(timeout=60)
    assert job.done()


def test_a_full_shuffle_disk_fails_the_pipeline_cleanly(tmp_path: Path) -> None:
    # Given workers whose shuffle directory is a 1 MiB tmpfs
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr.decode().strip()}")
    try:
        env = {**cluster_env(), "SHARDMILL_WORKER_SHUFFLE_DIR": str(small)}
        with (
            LocalCluster(workers=2, imports=["sm_tasks", "sm_pipes"], env=env, **FAST) as c,
            c.client() as own,
        ):
            big = {"user": np.arange(400_000), "amount": np.arange(400_000)}  # 6.4 MB
            p = Pipeline.from_tables([big]).repartition("user").collect()
            # When a map stage spills more than the disk holds
            with pytest.raises(PipelineFailed) as e:
                own.run(p, max_attempts=1).result(timeout=60)
            # Then the pipeline fails with the directory named and the fix ...
            assert "shuffle directory" in str(e.value) and "is full" in str(e.value)
            assert "--shuffle-dir" in str(e.value)
            # ... what it wrote is gone, and the cluster goes on
            assert sum(f.stat().st_size for f in small.rglob("*") if f.is_file()) == 0
            assert own.map("sm_tasks:square", [(3,)]).result(timeout=30) == [9]
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_shuffle_bytes_held_show_in_workers_and_metrics(client: Client, shuffle_dir: Path) -> None:
    # Given a megabyte of map output in each worker's shuffle directory
    for worker in shuffle_dir.iterdir():
        (worker / "t0" / "s0-0-x" / "r0").mkdir(parents=True)
        np.save(worker / "t0" / "s0-0-x" / "r0" / "0.npy", np.zeros(1 << 17))
    try:
        # Then the workers report it in their heartbeats: `workers` and the metrics show it
        held = 2 * ((1 << 20) + 128)  # with each .npy's header
        wait_until(
            lambda: sum(w.shuffle_bytes for w in client.workers()) == held,
            what="the workers' shuffle bytes",
        )
        lines = client.metrics().splitlines()
        values = [float(x.split()[1]) for x in lines if x.startswith("shardmill_shuffle_bytes ")]
        assert values == [held]
    finally:
        for worker in shuffle_dir.iterdir():
            shutil.rmtree(worker / "t0")


def test_a_finished_pipeline_is_pruned_with_its_stage_jobs(client: Client) -> None:
    job = client.run(Pipeline.from_tables([{"user": np.arange(5)}]).repartition("user"))
    job.result(timeout=60)
    assert job.id in {p.pipeline_id for p in client.pipelines()}
    client.prune(0)
    assert job.id not in {p.pipeline_id for p in client.pipelines()}
    assert not any(j.job_id.startswith(job.id) for j in client.jobs())


def test_the_dashboard_lists_pipelines_by_stage(pipes: LocalCluster, client: Client) -> None:
    # Given a finished pipeline and the dashboard, a real process on a loopback port
    job = client.run(
        Pipeline.from_tables([{"user": np.arange(50)}]).groupby("user").agg(n=("user", "count"))
    )
    job.result(timeout=60)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**cluster_env(), **pipes.client_env()}
    cmd = [sys.executable, "-m", "shardmill", "dashboard", "--port", str(port)]
    with subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL) as proc:
        try:
            url = f"http://127.0.0.1:{port}/api/pipelines"
            listed = wait_until(lambda: _get_json(url), what="the dashboard's pipelines")
            # Then its API has the pipeline's stages, and its page draws them
            mine = next(p for p in listed if p["pipeline_id"] == job.id)
            assert [s["label"] for s in mine["stages"]] == ["1 tables", "groupby user"]
            assert mine["stages"][1]["done"] == mine["stages"][1]["shards"]
            page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read()
            assert b'id="pipelines"' in page and b"/api/pipelines" in page
        finally:
            proc.terminate()


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except OSError:
        return None
