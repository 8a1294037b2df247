"""Map jobs on a real local cluster: order, values, arrays, remote errors, unknown functions."""

from __future__ import annotations

import numpy as np
import pytest

from shardmill import LocalCluster, RemoteError
from shardmill.errors import JobFailed


def test_map_of_1000_tasks_returns_results_in_input_order(cluster: LocalCluster) -> None:
    # Given a cluster of two workers / When 1,000 tasks are mapped
    with cluster.client() as client:
        squares = client.map("sm_tasks:square", [(i,) for i in range(1000)]).result(timeout=60)
    # Then every result is there, in input order
    assert squares == [i * i for i in range(1000)]


def test_call_returns_one_value(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        assert client.call("sm_tasks:square", 3, timeout=30) == 9
        assert client.call("sm_tasks:add", "a", "b", timeout=30) == "ab"


def test_numpy_arrays_travel_both_ways(cluster: LocalCluster) -> None:
    # Given non-contiguous, empty and integer arrays as arguments
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    args = [(base[:, ::2], 2.0), (np.zeros((0, 3)), 1.0), (np.arange(5, dtype=np.int16), 3)]
    with cluster.client() as client:
        out = client.map("sm_tasks:scale", args).result(timeout=30)
    # Then each result equals the local computation, dtype and shape included
    for (arr, k), got in zip(args, out, strict=True):
        want = arr * k
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_task_that_raises_gives_remote_error_with_traceback(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        job = client.map("sm_tasks:boom", [(7,)], max_attempts=1)
        with pytest.raises(RemoteError) as info:
            job.result(timeout=30)
    err = info.value
    assert err.remote_type == "ValueError"
    assert "boom on 7" in err.remote_message
    assert "sm_tasks.py" in err.remote_traceback and "raise ValueError" in err.remote_traceback
    assert err.shard == 0 and err.worker
    assert "shard 0" in str(err)


def test_unknown_function_fails_at_once_and_worker_stays_up(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        # Given a module no worker imported / When it is called
        job = client.map("not_imported_mod:f", [(1,)], max_attempts=3)
        with pytest.raises(JobFailed) as info:
            job.result(timeout=30)
        text = str(info.value)
        # Then the job fails at once with the function, the worker and the fix named
        assert "not_imported_mod:f" in text
        assert "--import not_imported_mod" in text
        assert "worker" in text
        assert job.status(shards=True).shards[0].attempts == 1  # not retried
        # And a missing function in an imported module is named too
        # (what the module offers, the closest first, and no advice to import it again)
        with pytest.raises(JobFailed, match="has no function 'sqare'") as typo:
            client.map("sm_tasks:sqare", [(1,)]).result(timeout=30)
        assert "did you mean 'square'?" in str(typo.value)
        assert "it offers: " in str(typo.value) and "boom" in str(typo.value)
        assert "shardmill worker --import" not in str(typo.value)
        # And the workers stay up and serve the next job
        assert client.call("sm_tasks:square", 5, timeout=30) == 25
        assert len(client.workers()) == 2


def test_unsendable_result_is_a_clear_error(cluster: LocalCluster) -> None:
    with cluster.client() as client, pytest.raises(JobFailed, match="cannot be sent"):
        client.call("sm_tasks:returns_object", timeout=30)
