"""The edge budget on a real cluster: a fast stage pauses while a slow one absorbs what waits;
every result byte-identical to the same pipeline run a stage at a time (no budget)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, cli_json, cluster_env, wait_until

from shardmill import Client, LocalCluster, Pipeline
from shardmill.pipeline.sinks import partitions_of

SHARDS = 24
ROWS = 50_000  # a shard's rows: its output is 800 kB (two int64 columns)
BUDGET = 4 << 20  # five shards' outputs


@pytest.fixture(scope="module")
def shuffle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shuffle")


@pytest.fixture(scope="module")
def cluster(shuffle_dir: Path) -> Iterator[LocalCluster]:
    env = {**cluster_env(), "SHARDMILL_WORKER_SHUFFLE_DIR": str(shuffle_dir)}
    with LocalCluster(workers=2, imports=["sm_pipes"], env=env, **FAST) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.client() as c:
        tables = [{"k": np.arange(4)}, {"k": np.arange(4)}]  # both workers' children ready
        c.run(Pipeline.from_tables(tables).repartition("k").collect()).result(timeout=60)
        yield c


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(11)
    n = SHARDS * ROWS
    data = np.stack([rng.integers(0, 100_000, n), rng.integers(0, 100, n)], axis=1)
    path = tmp_path_factory.mktemp("edges") / "events.npy"
    np.save(path, data)
    return path, data


@contextmanager
def _waiting(root: Path) -> Iterator[dict[str, int]]:
    """The producer's map outputs on the workers' disks (written or being written), counted
    every few milliseconds from outside the cluster: "peak" is the most seen at once."""
    seen = {"peak": 0, "samples": 0}
    stop = threading.Event()

    def count() -> None:
        while not stop.wait(0.005):
            seen["peak"] = max(seen["peak"], _held(root))
            seen["samples"] += 1

    counter = threading.Thread(target=count, daemon=True)
    counter.start()
    try:
        yield seen
    finally:
        stop.set()
        counter.join()


def _paced(path: Path) -> Pipeline:
    """A map (0.4 µs a row) feeding, through a repartition, a map ten times slower."""
    return (
        Pipeline.read(path, shards=SHARDS)
        .map("sm_pipes:paced")
        .repartition("user", partitions=2)
        .map("sm_pipes:slow_rows")
        .collect()
    )


def _held(root: Path) -> int:
    """Bytes of stage 0's outputs under root/WORKER/TOKEN/OUTPUT/RUN/*.npy (os.walk passes
    over what goes away while it walks)."""
    total = 0
    for top, _, files in os.walk(root):
        if not Path(top).parent.name.lstrip(".").startswith("s0-"):
            continue
        for name in files:
            try:
                total += os.stat(os.path.join(top, name)).st_size if name.endswith(".npy") else 0
            except OSError:  # let go meanwhile
                continue
    return total


def test_a_fast_stage_waits_within_the_edge_budget_for_a_ten_times_slower_one(
    cluster: LocalCluster, client: Client, events: tuple[Path, np.ndarray], shuffle_dir: Path
) -> None:
    # Given a map (0.4 µs a row) feeding, through a repartition, a map ten times slower
    path, data = events
    p = _paced(path)
    # When it runs with a 4 MiB edge budget (its output: 19.2 MB)
    with _waiting(shuffle_dir) as waiting:
        job = client.run(p, edge_budget=BUDGET)
        paused = "paused: "
        wait_until(lambda: paused in job.progress()[0].waiting, timeout=60, what="a pause")
        got = job.result(timeout=300)
    # Then what waited on the workers' disks stayed within the budget (+10 %) all along ...
    assert waiting["samples"] > 50
    assert 0 < waiting["peak"] <= BUDGET * 1.1, waiting["peak"]
    producer = job.progress()[0]
    assert 0 < producer.edge_peak <= BUDGET and producer.waves > 2
    assert any("so stage 0 may go on" in line for line in job.story)
    shown = cli_json("status", job.id, master=cluster)["stages"][0]
    assert shown["edge_budget"] == BUDGET and shown["waves"] == producer.waves
    # ... and the rows are right: each partition's rows in map-shard order, the slow map run
    part = partitions_of({"user": data[:, 0]}, ["user"], 2, "test")
    order = np.concatenate([np.flatnonzero(part == k) for k in range(2)])
    assert np.array_equal(got["user"], data[order, 0])
    assert np.array_equal(got["twice"], data[order, 1] * 2)
    # Without a budget the whole output waits at once: the budget above is what bounded it
    with _waiting(shuffle_dir) as unbounded:
        same = client.run(p, edge_budget=0).result(timeout=300)
    assert unbounded["peak"] > 3 * BUDGET
    assert all(same[k].tobytes() == got[k].tobytes() for k in got)


@pytest.mark.parametrize("tail", ["groupby", "sort", "join"])
def test_waves_give_the_same_bytes_as_a_stage_at_a_time(client: Client, tail: str) -> None:
    # Given 12 shards of events and a budget of about two shards' outputs
    rng = np.random.default_rng(5)
    data = rng.integers(0, 3000, (12 * 4000, 2))
    tables = [{"user": d[:, 0], "amount": d[:, 1]} for d in np.array_split(data, 12)]
    src = Pipeline.from_tables(tables)
    if tail == "groupby":
        p = src.groupby("user", partitions=3).agg(total=("amount", "sum"), mean=("amount", "mean"))
    elif tail == "sort":
        p = src.sort("user", descending=True, partitions=3)
    else:
        names = {"user": np.arange(3000), "name": np.arange(3000) * 7}
        p = src.join(Pipeline.from_tables([names]), on="user", how="left", partitions=3)
    # When it runs with the budget, and without one
    job = client.run(p.collect(), edge_budget=2 * 4000 * 16)
    got = job.result(timeout=120)
    want = client.run(p.collect(), edge_budget=0).result(timeout=120)
    # Then waves were absorbed, and the bytes are the same
    assert job.progress()[0].waves >= 2, job.story
    assert got.keys() == want.keys()
    assert all(got[k].tobytes() == want[k].tobytes() for k in got)


def test_master_then_worker_killed_mid_wave_give_the_exact_rows(
    events: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    # Given a master with a state directory, running the paced pipeline in waves
    path, data = events
    p = _paced(path)
    with LocalCluster(
        workers=2, imports=["sm_pipes"], env=cluster_env(), state_dir=tmp_path / "state", **FAST
    ) as cluster:
        own = cluster.client()
        job = own.run(p, edge_budget=BUDGET)
        # When the master is killed with -9 once a wave was absorbed, and started again ...
        wait_until(lambda: job.progress()[0].waves >= 1, timeout=60, what="a wave")
        cluster.kill_master()
        cluster.start_master()
        # ... then a worker, holding outputs and absorbed runs, two waves later
        wait_until(lambda: job.progress()[0].waves >= 3, timeout=60, what="more waves")
        assert job.status().state == "running"
        os.kill(cluster.workers[1].pid, signal.SIGKILL)
        got = job.result(timeout=300)
        end = job.status()
        own.close()
    # Then the rows are exact, the lost work ran again, and the edge held its budget
    part = partitions_of({"user": data[:, 0]}, ["user"], 2, "test")
    order = np.concatenate([np.flatnonzero(part == k) for k in range(2)])
    assert np.array_equal(got["user"], data[order, 0])
    assert np.array_equal(got["twice"], data[order, 1] * 2)
    story = "\n".join(end.story)
    assert "could not fetch from" in story, story
    assert end.stages[0].edge_peak <= BUDGET
