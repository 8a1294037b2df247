"""The joblib backend over real master and worker processes: results equal a serial run, by
name and (where the cluster allows it) pickled, scikit-learn included; refused in one line
where pickling is off."""

from __future__ import annotations

import os
from pathlib import Path

import joblib
import numpy as np
import pytest
import sm_tasks
from pickled import pickle_cluster
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.tree import DecisionTreeClassifier

import shardmill.joblib  # noqa: F401 (registers the backend)
from shardmill import LocalCluster
from shardmill.errors import JobFailed, ServerError
from shardmill.ops.calls import NeedsPickle


def _config(cluster: LocalCluster, **options: object) -> object:
    options.setdefault("keys", cluster.keys_dir)
    return joblib.parallel_config(backend="shardmill", master=cluster.client_address, **options)


def test_ten_thousand_small_calls_equal_a_serial_run(trusted: LocalCluster) -> None:
    calls = [joblib.delayed(sm_tasks.add)(i, 3 * i) for i in range(10_000)]
    with _config(trusted):
        parallel = joblib.Parallel(n_jobs=-1)(calls)
    assert parallel == joblib.Parallel(n_jobs=1)(calls)


def test_numpy_arguments_travel_as_frames(trusted: LocalCluster) -> None:
    arrays = [np.arange(1000, dtype=np.float64) * k for k in range(20)]
    with _config(trusted):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(sm_tasks.describe)(a) for a in arrays)
    assert out == [sm_tasks.describe(a) for a in arrays]


def test_a_raising_call_raises_from_parallel(trusted: LocalCluster) -> None:
    with _config(trusted), pytest.raises(ValueError, match="boom on 3"):
        joblib.Parallel(n_jobs=-1)(joblib.delayed(sm_tasks.boom)(i) for i in [3])


def test_a_parallel_inside_a_task_runs_on_its_worker(trusted: LocalCluster) -> None:
    # When each task (pickled: a local function) runs a Parallel of its own on "shardmill"
    with _config(trusted, pickle=True):
        groups = joblib.Parallel(n_jobs=2)(
            joblib.delayed(sm_tasks.nested_pids)(4) for _ in range(4)
        )
    # Then the inner calls ran on the worker that ran the task, in its process (threads)
    for outer, inner in groups:
        assert inner == [outer] * 4
    assert os.getpid() not in {outer for outer, _ in groups}


def _grid_search(n_jobs: int = -1) -> GridSearchCV:
    X, y = load_iris(return_X_y=True)
    search = GridSearchCV(
        DecisionTreeClassifier(random_state=0),
        {"max_depth": [1, 2, 3], "min_samples_leaf": [1, 5]},
        cv=3,
        n_jobs=n_jobs,
    )
    return search.fit(X, y)


def test_grid_search_with_pickle_equals_n_jobs_1(trusted: LocalCluster) -> None:
    # Given the same search run serially
    with joblib.parallel_config(backend="sequential"):
        serial = _grid_search()
    # When it runs on the cluster, pickled (estimators are objects)
    with _config(trusted, pickle=True):
        remote = _grid_search()
    # Then it picks the same parameters from the same scores
    assert remote.best_params_ == serial.best_params_
    for key, values in serial.cv_results_.items():
        if key.endswith("_test_score") or key == "params":
            assert list(remote.cv_results_[key]) == list(values), key


def test_without_pickle_the_search_fails_at_once_naming_the_switch(trusted: LocalCluster) -> None:
    with _config(trusted), pytest.raises(NeedsPickle) as caught:
        _grid_search()
    assert "\n" not in str(caught.value) and "pickle=True" in str(caught.value)


def test_a_key_without_the_permission_is_refused_in_one_line(
    trusted: LocalCluster, keys: Path
) -> None:
    plain = keys / "handout" / "client-plain"
    with _config(trusted, pickle=True, keys=plain), pytest.raises(ServerError) as caught:
        _grid_search()
    message = str(caught.value)
    assert "\n" not in message and "pickle/plain.key" in message and "--allow-pickle" in message


def test_workers_without_the_flag_refuse_in_one_line(keys: Path) -> None:
    # (one slot: n_jobs=-1 would be 1, which joblib runs in this process, whatever the backend)
    with (
        pickle_cluster(keys, allow=False, workers=1) as cluster,
        _config(cluster, pickle=True),
        pytest.raises(JobFailed) as caught,
    ):
        _grid_search(n_jobs=2)
    message = str(caught.value)
    assert "--allow-pickle" in message and "pickled calls are off" in message
