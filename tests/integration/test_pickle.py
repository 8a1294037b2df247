"""The pickle opt-in with shardmill.futures: lambdas, closures and objects run where the
workers (--allow-pickle) and the client's key (KEYS/pickle/) both allow it; the master never
unpickles, and a key without the permission is refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shardmill import LocalCluster
from shardmill.errors import ServerError
from shardmill.futures import Executor
from shardmill.ops.calls import RemoteTraceback


def test_closures_and_arrays_run_pickled(trusted: LocalCluster) -> None:
    offset = np.arange(100_000, dtype=np.float64)  # out of band: a frame, not in the pickle
    with Executor(client=trusted.client(), pickle=True) as ex:
        futures = [ex.submit(lambda k: offset * k, k) for k in range(4)]
        for k, future in enumerate(futures):
            np.testing.assert_array_equal(future.result(timeout=60), offset * k)


def test_what_a_pickled_call_raises_is_raised_with_its_cause(trusted: LocalCluster) -> None:
    def fails(x: int) -> int:
        raise KeyError(f"no {x}")

    with Executor(client=trusted.client(), pickle=True) as ex:
        future = ex.submit(fails, 5)
        with pytest.raises(KeyError, match="no 5") as caught:
            future.result(timeout=60)
    assert isinstance(caught.value.__cause__, RemoteTraceback)
    assert "fails" in str(caught.value.__cause__)


def test_a_key_without_the_permission_is_refused(trusted: LocalCluster, keys: Path) -> None:
    client = trusted.client(keys=keys / "handout" / "client-plain")
    with (
        Executor(client=client, pickle=True) as ex,
        pytest.raises(ServerError, match=r"KEYS/pickle/plain\.key") as caught,
    ):
        ex.submit(lambda: 1).result(timeout=60)
    assert "\n" not in str(caught.value)
    with trusted.client() as admin:  # refused before it became a job
        assert not [job for job in admin.jobs() if job.owner == "plain"]
