"""Big by-value arrays through /dev/shm when client, master and workers share a host.

The proof that bytes did not cross the sockets is a client whose message limit (1 MiB) is far
below the arrays it sends, and tasks that report what holds their argument in the child.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, cluster_env, wait_until

from shardmill import LocalCluster
from shardmill.errors import MessageTooLarge, ServerError
from shardmill.wire import shm
from shardmill.wire.protocol import ShmRef, Submit
from shardmill.wire.spec import JobSpec

pytestmark = pytest.mark.skipif(not shm.available(), reason="no writable /dev/shm")


def _segments() -> set[str]:
    return {p.name for p in shm.SHM_DIR.glob("shardmill-*")}


def test_submit_of_a_big_array_goes_through_shared_memory(cluster: LocalCluster) -> None:
    # Given a 24 MB array and a client that may put at most 1 MiB on the wire
    data = np.random.default_rng(3).normal(5.0, 2.0, size=(300_000, 10))
    with cluster.client() as client:
        client.max_message_bytes = 1 << 20
        assert all(w.shared_memory for w in client.workers())
        # When column_stats runs over it by value
        stats = client.submit("column_stats", data, shards=6).result(timeout=60)
    # Then it matches NumPy
    np.testing.assert_allclose(stats["mean"], data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], data.std(axis=0), rtol=1e-9)
    assert stats["count"] == 300_000


def _pooled(before: set[str]) -> set[tuple[str, int]]:
    """Pooled segments that were not there before (name, inode). A file the master deletes
    between the listing and its stat (the expiry the test waits for) is gone: not pooled."""
    found = set()
    for path in shm.SHM_DIR.glob("shardmill-free-*"):
        try:
            if path.name not in before:
                found.add((path.name, path.stat().st_ino))
        except FileNotFoundError:
            continue
    return found


def test_segments_are_pooled_reused_and_expire() -> None:
    # Given a master that keeps a finished job's segment for 1.5 s
    env = {**cluster_env(), "SHARDMILL_MASTER_SHM_POOL_IDLE": "1.5"}
    data = np.arange(4_000_000, dtype=np.float64).reshape(-1, 4)  # 32 MB
    before = _segments()
    cluster = LocalCluster(workers=1, imports=["sm_tasks"], env=env, **FAST)
    with cluster, cluster.client() as client:
        first = client.submit("sum_count", data, shards=4).result(timeout=60)
        # Then the job's segment went to the pool when the job ended...
        pooled = wait_until(lambda: _pooled(before), what="a pooled file")
        # ...and the next big request takes that file (the same inode) back
        second = client.submit("sum_count", data + 1.0, shards=4).result(timeout=60)
        after = wait_until(lambda: _pooled(before), what="pooled again")
        assert {ino for _, ino in after} == {ino for _, ino in pooled}
        np.testing.assert_allclose(second["sum"], first["sum"] + data.shape[0])
        # And an unclaimed pooled segment is deleted after the idle time
        wait_until(lambda: not _pooled(before), timeout=30, what="pool expiry")
    assert _segments() <= before  # a stopped master leaves nothing behind


def test_map_arguments_are_mapped_by_the_children(cluster: LocalCluster) -> None:
    blocks = [np.full((100_000, 4), float(i)) for i in range(4)]  # 3.2 MB each
    with cluster.client() as client:
        client.max_message_bytes = 1 << 20
        out = client.map("sm_tasks:backing", [(b,) for b in blocks]).result(timeout=60)
        # Then each child read its block from a shared-memory mapping, not a socket frame
        assert [holder for holder, _ in out] == ["mmap"] * 4
        assert [total for _, total in out] == [float(b.sum()) for b in blocks]
        # And with shared memory off, the same job is refused for size: it would be bytes
        client.shared_memory = False
        with pytest.raises(MessageTooLarge):
            client.map("sm_tasks:backing", [(b,) for b in blocks])


def test_small_arrays_still_travel_as_frames(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        out = client.map("sm_tasks:backing", [(np.ones(10),)]).result(timeout=60)
    assert out[0][0] != "mmap" and out[0][1] == 10.0


@pytest.mark.parametrize(
    ("segment", "offset", "size", "problem"),
    [
        ("shardmill-" + "0" * 32, 0, 8, "cannot open"),
        ("../../etc/passwd", 0, 8, "not a shardmill"),
        ("SELF", 4096, 8, "holds"),
        ("LINK", 0, 8, "cannot open"),
    ],
)
def test_bad_references_are_refused_and_the_client_told(
    cluster: LocalCluster, tmp_path: Path, segment: str, offset: int, size: int, problem: str
) -> None:
    # Given a segment of 8 bytes this test owns, and a symlink to it
    real = shm.new_name()
    (shm.SHM_DIR / real).write_bytes(b"12345678")
    link = shm.new_name()
    (shm.SHM_DIR / link).symlink_to(shm.SHM_DIR / real)
    name = {"SELF": real, "LINK": link}.get(segment, segment)
    ref = ShmRef(frame=0, segment=name, offset=offset, size=size)
    msg = Submit(
        spec=JobSpec(op="map", function="sm_tasks:describe"),
        parts=[b"\x91\x91\xc7\x0b\x01" + b"\x93\xa3<f8\x91\x01\x00"],
        part_counts=[1],
        part_arrays=[1],
        shm=[ref],
    )
    try:
        with cluster.client() as client:
            # When a Submit names it badly / Then the master refuses it, naming the problem
            with pytest.raises(ServerError) as info:
                client._request(msg, [b""])
            assert info.value.code == "shm" and problem in str(info.value)
            # And the master still serves, and left our file alone
            assert client.call("sm_tasks:square", 4, timeout=30) == 16
        assert (shm.SHM_DIR / real).read_bytes() == b"12345678"
    finally:
        shm.remove(real)
        shm.remove(link)


def test_a_killed_masters_segments_are_removed_and_its_job_resumes(tmp_path: Path) -> None:
    # Given a checkpointing master holding a job whose 4 MB arguments came by shared memory
    flag = str(tmp_path / "go")
    blocks = [np.full((125_000, 4), float(i + 1)) for i in range(3)]
    cluster = LocalCluster(
        workers=2, imports=["sm_tasks"], env=cluster_env(), state_dir=tmp_path / "state", **FAST
    )
    with cluster, cluster.client() as client:
        before = _segments()
        job = client.map("sm_tasks:sum_after", [(b, flag) for b in blocks], chunk_size=1)
        held = wait_until(lambda: _segments() - before, what="the job's segment")
        # When the master is killed mid-job and started again on the same state dir
        cluster.kill_master()
        assert held <= _segments()  # nobody could clean up after a SIGKILL...
        cluster.start_master()
        # Then the new master removed what the old one left...
        wait_until(lambda: not held & _segments(), what="the leftover segment removed")
        # ...and the job finishes from the inputs in the state dir
        Path(flag).touch()
        assert job.result(timeout=60) == [float(b.sum()) for b in blocks]
