"""Replay bundles on disk: capped, read back, pruned with their job."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardmill.debug import bundle
from shardmill.errors import ReplayError
from shardmill.master.checkpoint import Checkpointer
from shardmill.wire.protocol import ErrorInfo
from shardmill.worker.replay import run


def _bundle(payload: bytes) -> bundle.Bundle:
    task = {"kind": "task", "job_id": "j1", "shard": 2, "attempt": 1, "op": "map"}
    return bundle.Bundle(
        job_id="j1",
        shard=2,
        attempt=1,
        worker="w",
        function="m:f",
        spec={"op": "map"},
        task={**task, "payload": payload},
        arrays=[b"\x00" * 8],
        error=ErrorInfo(kind="error", type="ValueError", message="no"),
    )


def test_a_bundle_over_the_cap_keeps_no_arguments_and_replay_says_why(tmp_path: Path) -> None:
    # Given a bundle whose arguments pass the cap
    written = bundle.write(tmp_path, bundle.trimmed(_bundle(b"x" * 100), cap=64))
    # When it is read back
    got = bundle.read(tmp_path, "j1", 2)
    # Then it names the dropped size, keeps the failure, and replay refuses with the fix
    assert written.name == "2-1.msgpack" and got.dropped == 108 and got.arrays == []
    assert got.error.message == "no"
    with pytest.raises(ReplayError, match="replay_bundle_bytes"):
        run(got)
    # And one within the cap is kept whole
    bundle.write(tmp_path, bundle.trimmed(_bundle(b"x" * 10), cap=64))
    assert bundle.read(tmp_path, "j1", 2, 1).task["payload"] == b"x" * 10


def test_a_pruned_job_takes_its_bundles_with_it(tmp_path: Path) -> None:
    # Given a state dir holding a job's bundle
    checkpoint = Checkpointer(tmp_path)
    try:
        bundle.write(tmp_path, _bundle(b""))
        # When the job is forgotten
        checkpoint.forget(["j1"])
    finally:
        checkpoint.close()
    # Then its bundles are gone, and asking for them names the state dir
    with pytest.raises(ReplayError, match="no replay bundles for job j1"):
        bundle.read(tmp_path, "j1", 2)
