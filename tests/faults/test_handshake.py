"""A wrong key is named at once, on both ends: never a 'no answer, is it running?' after a wait.

Each client here has a connect timeout of a minute: an answer that came from waiting it out
would be MasterUnreachable, not HandshakeRefused.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import FAST, cluster_env, run_cli, wait_until

from shardmill import Client, HandshakeRefused, LocalCluster, exitcodes
from shardmill.wire.handshake import key_fingerprint
from shardmill.wire.security import keygen

PATIENT = 60.0


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    logs = tmp_path_factory.mktemp("logs")
    with LocalCluster(workers=1, env=cluster_env(), log_dir=logs, **FAST) as c:
        yield c


@pytest.fixture(scope="module")
def keysets(tmp_path_factory: pytest.TempPathFactory, secured: LocalCluster) -> dict[str, Path]:
    """A stranger's pairs (with our master's public key), and our client pair with another
    master's public key."""
    root = tmp_path_factory.mktemp("keysets")
    stranger, wrong_master = root / "stranger", root / "wrong_master"
    keygen(stranger)
    keygen(wrong_master)
    assert secured.keys_dir is not None
    ours = Path(secured.keys_dir)
    (stranger / "master.key").write_bytes((ours / "master.key").read_bytes())
    for name in ("client.key", "client.key_secret"):
        (wrong_master / name).write_bytes((ours / name).read_bytes())
    return {"stranger": stranger, "wrong_master": wrong_master}


def master_log(cluster: LocalCluster) -> str:
    assert cluster.log_dir is not None
    return (cluster.log_dir / "master.log").read_text()


@contextlib.contextmanager
def knocking(address: str, mechanism: bytes) -> Iterator[None]:
    """A peer that sends a whole ZMTP 3 greeting naming `mechanism` and stays connected.

    A refused Client hangs up the moment it reads the master's greeting, which can reset the
    connection before the master has read the client's: then the master has nothing it can
    name. A peer that stays shows that what the master can read, it logs."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\0")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(greeting + b"\x00" + bytes(31))
        yield


def refusal(address: str, **kwargs: object) -> str:
    client = Client(address, connect_timeout=PATIENT, **kwargs)  # type: ignore[arg-type]
    with client, pytest.raises(HandshakeRefused) as info:
        client.jobs()
    return str(info.value)


def test_an_unknown_client_key_is_refused_by_name_and_logged(
    secured: LocalCluster, keysets: dict[str, Path]
) -> None:
    message = refusal(secured.client_address, keys=keysets["stranger"])
    finger = key_fingerprint(keysets["stranger"] / "client.key")
    assert "refused this client's key" in message
    assert finger in message and "clients/" in message
    # The master names the peer and the same fingerprint, once.
    wait_until(lambda: f"key fingerprint {finger}" in master_log(secured), what="the refusal log")
    assert "refused a peer at 127.0.0.1" in master_log(secured)


def test_a_key_of_the_other_role_is_refused_on_each_port_naming_the_role(
    secured: LocalCluster, tmp_path: Path
) -> None:
    """Whoever takes over a worker host cannot use its key as a client's, nor the reverse."""
    assert secured.keys_dir is not None
    ours = Path(secured.keys_dir)
    as_client = tmp_path / "worker_as_client"  # the worker's pair where a client's belongs
    as_client.mkdir()
    (as_client / "master.key").write_bytes((ours / "master.key").read_bytes())
    for part in ("key", "key_secret"):
        (as_client / f"client.{part}").write_bytes((ours / f"worker.{part}").read_bytes())
    t0 = time.monotonic()
    message = refusal(secured.client_address, keys=as_client)
    assert time.monotonic() - t0 < 2.0
    assert "not in the master's clients/ folder" in message and "worker's key" in message
    wait_until(
        lambda: "offered a worker's key (worker) on the client port" in master_log(secured),
        what="the master naming the role",
    )
    # And a client's pair on the worker port: the worker exits at once, naming it
    as_worker = tmp_path / "client_as_worker"
    as_worker.mkdir()
    (as_worker / "master.key").write_bytes((ours / "master.key").read_bytes())
    for part in ("key", "key_secret"):
        (as_worker / f"worker.{part}").write_bytes((ours / f"client.{part}").read_bytes())
    cmd = [sys.executable, "-m", "shardmill", "worker", "--master", secured.worker_address]
    t0 = time.monotonic()
    proc = subprocess.run(
        [*cmd, "--keys", str(as_worker)],
        capture_output=True,
        text=True,
        timeout=60,
        env=cluster_env(),
    )
    assert time.monotonic() - t0 < 5.0  # an interpreter start and the refusal
    assert proc.returncode == exitcodes.CONFIG and "workers/ folder" in proc.stderr
    wait_until(
        lambda: "offered a client's key (client) on the worker port" in master_log(secured),
        what="the master naming the role",
    )


def test_an_insecure_client_against_curve_is_told_to_get_keys(secured: LocalCluster) -> None:
    message = refusal(secured.client_address, insecure=True)
    assert "the master uses CURVE and this client runs --insecure" in message
    with knocking(secured.client_address, b"NULL"):
        wait_until(lambda: "it has no keys (--insecure)" in master_log(secured), what="the log")


def test_a_wrong_master_key_is_named(secured: LocalCluster, keysets: dict[str, Path]) -> None:
    message = refusal(secured.client_address, keys=keysets["wrong_master"])
    assert "master.key is not the public key of the master" in message
    wait_until(lambda: "another master's public key" in master_log(secured), what="the log")


@contextlib.contextmanager
def hanging_up() -> Iterator[str]:
    """An address that accepts each connection and closes it at once, as Docker's proxy does
    for a published port with nothing listening behind it (a standby master's client port)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                server.accept()[0].close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_a_master_address_that_hangs_up_is_passed_over_for_the_next(
    secured: LocalCluster,
) -> None:
    with hanging_up() as proxy:
        # Given an address that hangs up: told of it alone, a client is refused by name
        assert "is not the public key of the master" in refusal(proxy, keys=secured.keys_dir)
        # When a client is told of it first, then of the master (a standby and its primary)
        both = f"{proxy},{secured.client_address}"
        with Client(both, keys=secured.keys_dir, connect_timeout=PATIENT) as client:
            # Then the master answers it, at once: no timeout was waited out
            started = time.monotonic()
            assert client.ping().workers == 1
            assert time.monotonic() - started < PATIENT / 2


def test_the_cli_exits_with_the_settings_code_and_one_line(
    secured: LocalCluster, keysets: dict[str, Path]
) -> None:
    env = {**cluster_env(), "SHARDMILL_KEYS": str(keysets["stranger"])}
    env["SHARDMILL_CONNECT_TIMEOUT"] = str(PATIENT)
    proc = run_cli("jobs", master=None, env={**env, "SHARDMILL_MASTER": secured.client_address})
    assert proc.returncode == exitcodes.CONFIG, proc.stderr
    assert "refused this client's key" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_stranger_worker_stops_with_the_reason(
    secured: LocalCluster, keysets: dict[str, Path]
) -> None:
    cmd = [sys.executable, "-m", "shardmill.worker", "--master", secured.worker_address]
    cmd += ["--keys", str(keysets["stranger"]), "--heartbeat-interval", "0.05"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PATIENT, env=cluster_env())
    assert proc.returncode == exitcodes.CONFIG
    assert "the master refused this worker's key" in proc.stderr
    with secured.client() as client:  # it never registered, and nothing was created
        assert len(client.workers()) == 1
        assert client.jobs() == []


def test_a_curve_client_against_an_insecure_master(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keygen(keys)
    with LocalCluster(workers=0, insecure=True, log_dir=tmp_path, **FAST) as plain:
        message = refusal(plain.client_address, keys=keys)
        # libzmq reports either the mechanism mismatch or, when the master hung up first,
        # a failure with no detail: both messages name the master's --insecure.
        assert "runs --insecure" in message and "--keys" in message
        with knocking(plain.client_address, b"CURVE"):
            wait_until(lambda: "it uses CURVE, but this master" in master_log(plain), what="log")
