"""`shardmill replay` and `Client.replay` after the master has stopped: a map task's and a
dataset op's failed attempts raise again, here, from their bundles in the state dir."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, cluster_env, run_cli

from shardmill import Client, LocalCluster
from shardmill.errors import JobFailed, ReplayError

CHANGING = """
def fails(x):
    print("about to fail")
    raise KeyError(f"missing {x}")
"""


@dataclass
class Stopped:
    """Failed jobs of a cluster that is gone, and its state dir."""

    state: Path
    env: dict[str, str]
    mapped: str  # sm_tasks:print_then_raise over (7,)
    scanned: str  # sm_ops:poison over a .npy, row 150 raises
    changed: str  # a module edited after its attempt failed
    module: Path


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stopped]:
    tmp = tmp_path_factory.mktemp("replay")
    (tmp / "replay_mod.py").write_text(CHANGING)
    npy = tmp / "t.npy"
    np.save(npy, np.arange(400 * 3, dtype=np.float64).reshape(400, 3))
    env = cluster_env()
    env["PYTHONPATH"] = f"{tmp}:{env['PYTHONPATH']}"
    state = tmp / "state"
    imports = ["sm_tasks", "sm_ops", "replay_mod"]
    with (
        LocalCluster(
            workers=1,
            imports=imports,
            master_args=["--import", "sm_ops"],
            env=env,
            state_dir=state,
            **FAST,
        ) as c,
        c.client() as client,
    ):
        mapped = _fails(client.map("sm_tasks:print_then_raise", [(7,)], max_attempts=1))
        options = {"raise_row": 150}
        scan = client.submit("sm_ops:poison", npy, shards=4, max_attempts=1, options=options)
        scanned = _fails(scan)
        changed = _fails(client.map("replay_mod:fails", [(1,)], max_attempts=1))
    # The master is stopped from here on: only the state dir is left.
    (tmp / "replay_mod.py").write_text(CHANGING.replace("about", "now about"))
    yield Stopped(state, env, mapped, scanned, changed, tmp / "replay_mod.py")


def _fails(job: object) -> str:
    with pytest.raises(JobFailed):
        job.result(timeout=60)  # type: ignore[attr-defined]
    return str(job.id)  # type: ignore[attr-defined]


def _replay(s: Stopped, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "shardmill", "replay", *args, "--state-dir", str(s.state)]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=s.env, timeout=60)


def test_a_map_task_raises_again_after_the_master_stopped(stopped: Stopped) -> None:
    # When the failed shard is replayed from the state dir
    proc = _replay(stopped, stopped.mapped, "0")
    # Then it raises the attempt's exception, with its message, and prints as it did
    assert proc.returncode == 1, proc.stderr
    assert "computing shard input 7" in proc.stdout
    assert "replay raised ValueError: bad value 7 (the same as the attempt)" in proc.stdout
    assert "changed since" not in proc.stdout
    # And Client.replay raises it in this process
    with pytest.raises(ValueError, match=r"^bad value 7$"):
        Client.replay(stopped.mapped, 0, state_dir=stopped.state)


def test_a_dataset_op_over_a_npy_shard_raises_again(stopped: Stopped) -> None:
    # Given the op's failed shard: the one holding row 150 of 400, in 4 shards
    with pytest.raises(ValueError, match=r"^row 150 is poison$"):
        Client.replay(stopped.scanned, 1, state_dir=stopped.state)
    proc = _replay(stopped, stopped.scanned, "1", "--attempt", "1")
    assert "replay raised ValueError: row 150 is poison (the same" in proc.stdout, proc.stderr
    # And a shard that did not fail has no bundle: the error says where to look
    with pytest.raises(ReplayError, match="no failed attempt"):
        Client.replay(stopped.scanned, 0, state_dir=stopped.state)


def test_pdb_stops_at_the_raising_line(stopped: Stopped) -> None:
    # When the replay runs under --pdb, its debugger driven through a pipe
    proc = _replay(stopped, stopped.mapped, "0", "--pdb", stdin="c\n")
    # Then the debugger's prompt shows, stopped at the line that raised
    assert "(Pdb)" in proc.stdout, proc.stdout + proc.stderr
    where = proc.stdout.index("-> raise ValueError")
    assert "sm_tasks.py" in proc.stdout[:where] and "print_then_raise()" in proc.stdout[:where]
    assert "replay raised ValueError: bad value 7" in proc.stdout


def test_a_changed_module_is_named_before_the_replay_runs(stopped: Stopped) -> None:
    # Given a module edited after its attempt failed (the fixture did)
    proc = _replay(stopped, stopped.changed, "0")
    # Then the replay says so before running the code as it is now
    note = proc.stdout.index("note: module replay_mod changed since the attempt")
    assert note < proc.stdout.index("now about to fail")
    assert "replay raised KeyError: 'missing 1' (the same as the attempt)" in proc.stdout


def test_without_a_state_dir_or_the_module_replay_names_the_fix(stopped: Stopped) -> None:
    env = {k: v for k, v in stopped.env.items() if k != "SHARDMILL_MASTER_STATE_DIR"}
    proc = run_cli("replay", stopped.mapped, "0", env=env)
    assert proc.returncode != 0 and "--state-dir DIR" in proc.stderr
    # And a module this process cannot import is named, with where the worker had it
    with pytest.raises(ReplayError, match="module replay_mod cannot be imported here") as e:
        Client.replay(stopped.changed, 0, state_dir=stopped.state)
    assert str(stopped.module) in str(e.value)
