"""Several client identities, each owning its jobs; revocation by SIGHUP; a registry that
resolves only a module's own functions; a worker port that never buffers a huge frame; a
private state dir. Real master, workers and clients over CURVE."""

from __future__ import annotations

import importlib
import signal
import stat
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from helpers import FAST, cluster_env, run_cli, wait_until

from shardmill import LocalCluster, ServerError, exitcodes
from shardmill.errors import UnknownFunction
from shardmill.ops.registry import Registry
from shardmill.wire.codec import encode
from shardmill.wire.protocol import Heartbeat
from shardmill.wire.security import Security


@pytest.fixture(scope="module")
def owned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster whose key directory gains two named clients, alice and bob (not admins)."""
    state = tmp_path_factory.mktemp("state")
    with LocalCluster(
        workers=1, imports=["sm_tasks"], env=cluster_env(), state_dir=state / "s", **FAST
    ) as c:
        for name in ("alice", "bob"):
            made = run_cli("keygen", "--client", name, str(c.keys_dir))
            assert made.returncode == 0, made.stderr
            assert f"client-{name}" in made.stdout
        assert c.master is not None
        c.master.send_signal(signal.SIGHUP)  # accept them without a restart
        yield c


def _handout(cluster: LocalCluster, name: str) -> Path:
    assert cluster.keys_dir is not None
    return Path(cluster.keys_dir) / "handout" / f"client-{name}"


def _client(cluster: LocalCluster, name: str):  # type: ignore[no-untyped-def]
    from shardmill import Client

    return Client(cluster.client_address, keys=_handout(cluster, name), connect_timeout=10)


def test_each_client_owns_its_jobs_and_only_an_admin_cancels_anothers(
    owned: LocalCluster,
) -> None:
    # Given alice's job running (alice was accepted after the master's SIGHUP)
    alice = wait_until(lambda: _ping(owned, "alice"), what="alice accepted")
    with alice, _client(owned, "bob") as bob, owned.client() as admin:
        job = alice.map("sm_tasks:nap", [(i, 0.3) for i in range(20)], chunk_size=1)
        # Then every listing names its owner by the key's file name
        assert {j.job_id: j.owner for j in bob.jobs()}[job.id] == "alice"
        listed = run_cli("jobs", env=cluster_env() | {
            "SHARDMILL_MASTER": owned.client_address,
            "SHARDMILL_KEYS": str(_handout(owned, "bob")),
        })  # fmt: skip
        assert "alice" in listed.stdout
        # When bob cancels it / Then he is refused, naming the owner and the fix
        with pytest.raises(ServerError, match=r"belongs to alice.*admins/") as refused:
            bob.cancel(job.id)
        assert refused.value.code == "forbidden"
        assert alice.status(job.id).state == "running"
        # And bob's prune leaves alice's jobs alone
        bob.prune(0)
        assert job.id in {j.job_id for j in admin.jobs()}
        # When the operator's client (in admins/) cancels it / Then it is cancelled
        assert admin.cancel(job.id).state == "cancelled"


def test_a_revoked_key_is_refused_at_its_next_request_while_jobs_go_on(
    owned: LocalCluster,
) -> None:
    assert owned.keys_dir is not None and owned.master is not None
    alice = wait_until(lambda: _ping(owned, "alice"), what="alice accepted")
    bob = wait_until(lambda: _ping(owned, "bob"), what="bob accepted")
    with alice, bob:
        job = bob.map("sm_tasks:nap", [(i, 0.2) for i in range(10)], chunk_size=1)
        # When bob's public key is deleted and the master is sent SIGHUP
        (Path(owned.keys_dir) / "clients" / "bob.key").unlink()
        owned.master.send_signal(signal.SIGHUP)

        def refused() -> str | None:
            try:
                bob.jobs()
            except ServerError as e:
                return str(e)
            return None

        # Then bob's open connection gets no further answer but "revoked"
        assert "revoked" in wait_until(refused, what="bob refused")
        # And his job runs on to the end (alice, an owner of nothing there, still sees it)
        wait_until(lambda: alice.status(job.id).state == "done", what="bob's job done")
        assert {j.job_id: j.owner for j in alice.jobs()}[job.id].startswith("revoked key ")


def _ping(cluster: LocalCluster, name: str):  # type: ignore[no-untyped-def]
    client = _client(cluster, name)
    try:
        client.jobs()
    except Exception:  # not accepted yet: the SIGHUP is on its way
        client.close()
        return None
    return client


def test_a_re_exported_callable_is_refused_by_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "leaky_tasks.py").write_text(
        textwrap.dedent(
            """
            from subprocess import run
            from os.path import join
            from shlex import quote
            import shardmill

            __all__ = ["join", "own"]
            quoted = shardmill.task(quote)

            def own(x):
                return x
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry = Registry(["leaky_tasks"], worker="w")
    with pytest.raises(UnknownFunction, match=r"'run' is not defined in module.*subprocess"):
        registry.resolve("leaky_tasks:run")
    assert registry.resolve("leaky_tasks:own")(3) == 3  # its own
    assert registry.resolve("leaky_tasks:join")("a", "b") == "a/b"  # in its __all__
    assert registry.resolve("leaky_tasks:quoted")("a b") == "'a b'"  # marked @shardmill.task
    sys.modules.pop("leaky_tasks", None)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_huge_frame_on_the_worker_port_is_cut_without_buffering_it(
    owned: LocalCluster,
) -> None:
    """An authenticated worker (its key is right) sends a 400 MiB frame: the master's socket
    drops the connection at the frame's header, and its memory stays where it was."""
    assert owned.master is not None and owned.keys_dir is not None
    before = _rss_mib(owned.master.pid)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"big-" + bytes(range(250, 256)))
    sock.setsockopt(zmq.LINGER, 0)
    Security(keys=Path(owned.keys_dir)).client(sock, "worker")
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sock.connect(owned.worker_address)
    try:
        sock.send_multipart([*encode(Heartbeat()), b"\0" * (400 * 2**20)], copy=False)

        def cut() -> bool:
            while monitor.poll(100):
                if zmq.utils.monitor.recv_monitor_message(monitor)["event"] == (
                    zmq.EVENT_DISCONNECTED
                ):
                    return True
            return False

        wait_until(cut, timeout=60, what="the master to drop the connection")
        assert _rss_mib(owned.master.pid) - before < 50
        with owned.client() as client:  # still serving
            assert len(client.workers()) == 1
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()


def test_the_state_dir_is_readable_by_its_owner_only(owned: LocalCluster) -> None:
    assert owned.state_dir is not None
    state = Path(owned.state_dir)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = [p for p in state.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in files), [
        (p.name, oct(p.stat().st_mode)) for p in files
    ]


def test_a_revoked_worker_is_dropped_and_a_bad_key_file_does_not_stop_the_master(
    owned: LocalCluster,
) -> None:
    assert owned.keys_dir is not None and owned.master is not None and owned.log_dir is None
    keys = Path(owned.keys_dir)
    made = run_cli("keygen", "--worker", "w2", str(keys))
    assert made.returncode == 0, made.stderr
    # Given a junk file among the client keys: SIGHUP logs it and keeps the keys it had
    (keys / "clients" / "junk.key").write_text("not a key\n")
    owned.master.send_signal(signal.SIGHUP)
    # And w2's key is accepted once the junk is gone
    (keys / "clients" / "junk.key").unlink()
    owned.master.send_signal(signal.SIGHUP)
    proc = owned.add_worker("--keys", str(keys / "handout" / "worker-w2"))
    with owned.client() as client:
        wait_until(lambda: len(client.workers()) == 2, what="w2 registered")
        # When w2's public key is deleted and the master is sent SIGHUP
        (keys / "workers" / "w2.key").unlink()
        owned.master.send_signal(signal.SIGHUP)
        # Then w2 is told at its next message and exits with the settings code; it is gone
        assert proc.wait(timeout=30) == exitcodes.CONFIG
        wait_until(lambda: len(client.workers()) == 1, what="w2 dropped")
        assert client.map("sm_tasks:square", [(3,)]).result(timeout=30) == [9]
