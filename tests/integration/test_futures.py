"""shardmill.futures.Executor against the standard library's executor, point by point: the same
test runs on a ThreadPoolExecutor and on an Executor over real master and worker processes."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sm_tasks
from helpers import wait_until

from shardmill import LocalCluster
from shardmill.futures import BrokenExecutor, Executor
from shardmill.ops.calls import NeedsPickle, RemoteTraceback


@pytest.fixture(params=["stdlib", "shardmill"])
def executor(request: pytest.FixtureRequest, cluster: LocalCluster) -> Iterator[cf.Executor]:
    """One call at a time, so a second call is pending while the first runs."""
    if request.param == "stdlib":
        ex: cf.Executor = cf.ThreadPoolExecutor(max_workers=1)
    else:
        ex = Executor(client=cluster.client(), max_workers=1)
    with ex:
        yield ex


def test_submit_returns_the_value(executor: cf.Executor) -> None:
    assert executor.submit(sm_tasks.add, 2, b=3).result(timeout=30) == 5


def test_an_exception_is_raised_with_its_remote_traceback_as_cause(executor: cf.Executor) -> None:
    future = executor.submit(sm_tasks.boom, 7)
    with pytest.raises(ValueError, match="boom on 7") as caught:
        future.result(timeout=30)
    assert isinstance(future.exception(), ValueError)
    if isinstance(executor, Executor):  # the stdlib's threads raise in this process
        assert isinstance(caught.value.__cause__, RemoteTraceback)
        assert "boom on 7" in str(caught.value.__cause__)
        assert "sm_tasks.py" in str(caught.value.__cause__)


def test_cancel_works_while_pending_and_not_once_running(
    executor: cf.Executor, tmp_path: Path
) -> None:
    # Given a call that runs until a file exists, and a second one behind it
    flag = tmp_path / "go"
    running = executor.submit(sm_tasks.sum_after_flag, 1, str(flag))
    pending = executor.submit(sm_tasks.square, 2)
    # Then the pending one cancels, the running one does not
    assert pending.cancel() and pending.cancelled()
    assert pending.cancel()  # again: still True
    with pytest.raises(cf.CancelledError):
        pending.result()
    running_seen = cf.wait([running], timeout=0.0)
    assert not running_seen.done
    flag.touch()
    assert running.result(timeout=30) == 10
    assert not running.cancel()


def test_as_completed_wait_and_callbacks(executor: cf.Executor) -> None:
    futures = [executor.submit(sm_tasks.square, i) for i in range(6)]
    called = threading.Event()
    futures[-1].add_done_callback(lambda f: called.set())
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == [
        i * i for i in range(6)
    ]
    done, not_done = cf.wait(futures, timeout=30, return_when=cf.ALL_COMPLETED)
    assert len(done) == 6 and not not_done
    assert called.wait(timeout=30)
    late: list[int] = []
    futures[0].add_done_callback(lambda f: late.append(f.result()))  # done: called at once
    assert late == [0]


def test_map_keeps_order_and_raises_where_the_call_raised(executor: cf.Executor) -> None:
    assert list(executor.map(sm_tasks.square, range(20), chunksize=3)) == [i * i for i in range(20)]
    results = executor.map(sm_tasks.add, [1, 2, "x"], [1, 1, 1])
    assert next(results) == 2
    assert next(results) == 3
    with pytest.raises(TypeError):
        next(results)


def test_map_timeout(executor: cf.Executor, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    results = executor.map(sm_tasks.sum_after_flag, [1], [str(flag)], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(results)
    flag.touch()


def test_map_with_buffersize_reads_ahead_a_bounded_number(cluster: LocalCluster) -> None:
    # (the standard library has buffersize from Python 3.14 on)
    endless = iter(range(10**12))  # never read to its end: only `buffersize` chunks ahead
    with Executor(client=cluster.client(), max_workers=1) as executor:
        results = executor.map(sm_tasks.square, endless, chunksize=2, buffersize=3)
        assert [next(results) for _ in range(10)] == [i * i for i in range(10)]
        results.close()  # the chunks read ahead are cancelled
    # 5 chunks taken, 3 ahead: 16 items read, the 17th is next
    assert next(endless) == 16


def test_shutdown_cancels_pending_futures(executor: cf.Executor, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    running = executor.submit(sm_tasks.sum_after_flag, 1, str(flag))
    wait_until(running.running, what="the first call to start")
    pending = [executor.submit(sm_tasks.square, i) for i in range(3)]
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in pending)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(sm_tasks.square, 1)
    flag.touch()
    assert running.result(timeout=30) == 10


def test_a_lambda_needs_the_pickle_opt_in(cluster: LocalCluster) -> None:
    with Executor(client=cluster.client()) as ex, pytest.raises(NeedsPickle, match="pickle=True"):
        ex.submit(lambda: 1).result(timeout=30)


def test_a_lost_master_breaks_the_executor(fresh_cluster: LocalCluster, tmp_path: Path) -> None:
    # Given an executor with a short reconnect timeout and a call running
    client = fresh_cluster.client(connect_timeout=0.5)
    client.reconnect_timeout = 1.0
    ex = Executor(client=client, max_workers=1)
    running = ex.submit(sm_tasks.sum_after_flag, 1, str(tmp_path / "never"))
    pending = ex.submit(sm_tasks.square, 2)
    # When the master dies and stays dead
    fresh_cluster.kill_master()
    # Then every waiting future breaks instead of hanging, and so does a later submit
    with pytest.raises(BrokenExecutor):
        running.result(timeout=30)
    with pytest.raises(BrokenExecutor):
        pending.result(timeout=30)
    with pytest.raises(BrokenExecutor):
        ex.submit(sm_tasks.square, 3)
    ex.shutdown(wait=True)
