"""A pipeline on the Compose deployment: its shuffle crosses containers, worker to worker."""

from __future__ import annotations

import numpy as np
import pytest
from dockerenv import Compose

from shardmill import Pipeline

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]


def test_groupby_and_sort_shuffle_between_worker_containers(compose: Compose) -> None:
    # Given tables sent by value, and the three worker containers of the project
    rng = np.random.default_rng(21)
    table = {"user": rng.integers(0, 3000, 60_000), "amount": rng.integers(0, 100, 60_000)}
    parts = [{k: v[i::6] for k, v in table.items()} for i in range(6)]
    p = (
        Pipeline.from_tables(parts)
        .groupby("user", partitions=6)
        .agg(total=("amount", "sum"), n=("amount", "count"))
        .sort("total", descending=True)
        .collect()
    )
    # When it runs: each reduce shard fetches its partition from the containers that hold it
    with compose.client() as client:
        job = client.run(p)
        out = job.result(timeout=300)
        holders = set(job.progress()[0].holders)
        # and again with an edge budget of about two map outputs: waves absorbed early
        waved = client.run(p, edge_budget=150_000)
        again = waved.result(timeout=300)
        waves = waved.progress()[0].waves
    # Then the answer is NumPy's, and the map outputs lived in more than one container
    users, inv = np.unique(table["user"], return_inverse=True)
    total = np.bincount(inv, weights=table["amount"]).astype(np.int64)
    assert np.all(np.diff(out["total"]) <= 0)
    order = np.argsort(out["user"])
    assert np.array_equal(out["user"][order], users)
    assert np.array_equal(out["total"][order], total)
    assert len(holders) > 1 and not any("127.0.0.1" in h for h in holders), holders
    assert waves >= 1 and all(again[k].tobytes() == out[k].tobytes() for k in out)
