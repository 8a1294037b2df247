"""A master that cannot be reached is named at once, with the address tried and how to change it.

Clients here have a connect timeout of 20 s: an answer that came from waiting it out would say
"no answer within 20.0 s", never what was wrong.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from helpers import cluster_env

from shardmill import Client, HandshakeRefused, MasterUnreachable

PATIENT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def hangs_up() -> Iterator[str]:
    """A listener that accepts each connection and closes it before the handshake: what a
    CURVE master does to a plaintext peer whose greeting it read first."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


def test_nothing_listening_is_said_without_waiting_out_the_timeout() -> None:
    # Given a port where nothing listens / When a client asks / Then it says so, and how to fix
    address = f"tcp://127.0.0.1:{free_port()}"
    with (
        Client(address, connect_timeout=PATIENT, insecure=True) as client,
        pytest.raises(MasterUnreachable) as info,
    ):
        client.workers()
    message = str(info.value)
    assert "nothing is listening there" in message and address in message
    assert "--master tcp://HOST:5556" in message and "SHARDMILL_MASTER" in message


def test_a_plaintext_client_hung_up_on_is_told_about_insecure_and_keys(hangs_up: str) -> None:
    # Given a master that hangs up on the plaintext greeting before the client reads its own
    with (
        Client(hangs_up, connect_timeout=PATIENT, insecure=True) as client,
        pytest.raises(HandshakeRefused) as info,
    ):
        client.jobs()
    # Then the client names the mix-up and the fix, as it does when it reads the greeting
    assert "this client runs --insecure" in str(info.value) and "--keys" in str(info.value)


def test_a_worker_that_cannot_reach_its_master_names_the_address_and_the_flag() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "shardmill.worker", "--master", address, "--insecure"]
    cmd += ["--heartbeat-interval", "0.05", "--slots", "1"]
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=cluster_env()) as proc:
        try:
            assert proc.stderr is not None
            for line in proc.stderr:  # ends when the worker does: the test's timeout bounds it
                if "reconnecting" in line:
                    break
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert f"no answer from the master at {address}: " in line  # nothing there, or silent
    assert "--master tcp://HOST:5555" in line and "SHARDMILL_WORKER_MASTER" in line
