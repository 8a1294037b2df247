"""The worker's side of pipelines' shuffles: a directory of map outputs, served to peers.

Started by the agent before its children, which learn from the environment where to write
outputs and what address and key to advertise with them (`shardmill.pipeline.stage`).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import zmq

from shardmill.config import WorkerSettings, addresses
from shardmill.pipeline.store import PieceServer
from shardmill.wire.security import Security

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Pieces:
    """The shuffle directory and its server, for the agent's lifetime."""

    def __init__(self, settings: WorkerSettings, security: Security, worker_id: str) -> None:
        base = settings.shuffle_dir
        self._owned = base is None
        self.root = (
            Path(tempfile.mkdtemp(prefix="shardmill-shuffle-"))
            if base is None
            else (base / worker_id)
        )
        self.root.mkdir(parents=True, exist_ok=True)
        host = settings.shuffle_host or _default_host(settings.master)
        # Bind where peers will connect: loopback beside a loopback master, else every
        # interface (the advertised address is one of them).
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        public = security.peer_server(sock)
        bind = "127.0.0.1" if host in LOOPBACK else "*"
        if settings.shuffle_port:
            sock.bind(f"tcp://{bind}:{settings.shuffle_port}")
            port = settings.shuffle_port
        else:
            port = sock.bind_to_random_port(f"tcp://{bind}")
        self.address = f"tcp://{host}:{port}"
        self.server = PieceServer(self.root, sock, ttl=settings.shuffle_ttl)
        self.server.start()
        os.environ["SHARDMILL_SHUFFLE_DIR"] = str(self.root)
        os.environ["SHARDMILL_SHUFFLE_ADDR"] = self.address
        os.environ["SHARDMILL_SHUFFLE_PUBLIC"] = public
        os.environ["SHARDMILL_SHUFFLE_MEMORY"] = str(settings.shuffle_memory // settings.slots)
        os.environ["SHARDMILL_SHUFFLE_KEYS"] = "" if security.keys is None else str(security.keys)
        log.info("serving map outputs at %s from %s", self.address, self.root)

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _default_host(masters: str) -> str:
    """The address peers can reach this worker at: 127.0.0.1 beside a loopback master, else
    this host's address on the route to the first master it finds one to (a container's or
    pod's own IP, which its peers on the same network reach; its host name often resolves
    only locally). `masters`: the --master value, one address or a primary and its standby."""
    for master in addresses(masters):
        url = urlparse(master)
        host = url.hostname or ""
        if host in LOOPBACK:
            return "127.0.0.1"
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((host, url.port or 5555))  # UDP: no packet is sent
                return str(probe.getsockname()[0])
        except OSError:  # does not resolve (yet): a standby's name, a master not up
            continue
    return socket.gethostname()
