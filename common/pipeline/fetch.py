"""Fetching a reduce shard's pieces straight from the workers that hold them (never through the
master): one socket per holder, every request sent at once, answers gathered until a deadline.
A holder that does not answer in time, or no longer has the output, is a FetchFailed naming it:
the pipeline recomputes what it held from the stage before (lineage) and runs the shard again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
import zmq.auth
import zmq.utils.monitor

from shardmill.errors import FetchFailed
from shardmill.pipeline.tables import Table


@dataclass(frozen=True)
class Piece:
    """One map output's share for this shard: where it lives and what to ask for."""

    holder: str  # the holder's piece server, tcp://host:port
    key: str  # its CURVE public key (z85), "" when insecure
    out: str  # the output's id
    request: dict[str, Any]  # {"part": p} or {"lo": ..., "hi": ...}


REFUSALS = 3  # connections refused in a row: the holder's host answers, its server is gone


def fetch(pieces: list[Piece], token: str, timeout: float) -> list[Table]:
    """Every piece's rows, in the order given; FetchFailed names each holder that failed."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    peers: dict[str, _Peer] = {}
    poller = zmq.Poller()
    try:
        for i, piece in enumerate(pieces):
            peer = peers.get(piece.holder)
            if peer is None:
                peer = peers[piece.holder] = _Peer(ctx, piece)
                poller.register(peer.sock, zmq.POLLIN)
                poller.register(peer.monitor, zmq.POLLIN)
            req = {"token": token, "out": piece.out, "i": i, **piece.request}
            peer.sock.send(msgpack.packb(req))
        return _gather(pieces, peers, poller, timeout)
    finally:
        for peer in peers.values():
            peer.close()


class _Peer:
    """One holder: the socket fetches go out on, and its monitor, which tells a refused
    connection (a dead server on a live host) at once instead of at the deadline."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], piece: Piece) -> None:
        self.holder = piece.holder
        self.sock = _connect(ctx, piece)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED)
        self.refused = 0

    def refusals(self) -> int:
        """Read the monitor's events: refused connections since the last success."""
        while self.monitor.poll(0):
            event = zmq.utils.monitor.recv_monitor_message(self.monitor)
            connected = event["event"] == zmq.EVENT_CONNECTED
            self.refused = 0 if connected else self.refused + 1
        return self.refused

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


def _connect(ctx: zmq.Context[zmq.Socket[bytes]], piece: Piece) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    keys = os.environ.get("SHARDMILL_SHUFFLE_KEYS", "")
    if piece.key and keys:
        public, secret = zmq.auth.load_certificate(Path(keys) / "worker.key_secret")
        sock.curve_publickey = public
        assert secret is not None
        sock.curve_secretkey = secret
        sock.curve_serverkey = piece.key.encode()
    sock.connect(piece.holder)
    return sock


def _gather(
    pieces: list[Piece], peers: dict[str, _Peer], poller: zmq.Poller, timeout: float
) -> list[Table]:
    got: dict[int, Table] = {}
    missing: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    wanted = set(range(len(pieces)))
    by_socket = {id(p.sock): p for p in peers.values()}
    while wanted - set(got) - _of(pieces, missing):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for sock, _ in poller.poll(int(left * 1000) + 1):
            peer = by_socket.get(id(sock))
            if peer is None:  # a monitor: count refusals
                for p in peers.values():
                    if p.refusals() >= REFUSALS and p.holder not in missing:
                        missing[p.holder] = "its server refuses connections"
                continue
            head_raw, *cols = sock.recv_multipart(copy=False)
            head = msgpack.unpackb(head_raw.bytes)
            if not head.get("ok"):
                missing[peer.holder] = str(head.get("error", "refused"))
                continue
            index = int(head["i"])
            got[index] = {
                name: np.frombuffer(col.buffer, dtype=np.dtype(dt)).copy()
                for name, dt, col in zip(head["names"], head["dtypes"], cols, strict=True)
            }
    lost = {p.holder for i, p in enumerate(pieces) if i not in got}
    if lost:
        raise FetchFailed(_message(lost, missing, pieces, timeout))
    return [got[i] for i in range(len(pieces))]


def _of(pieces: list[Piece], missing: dict[str, str]) -> set[int]:
    return {i for i, p in enumerate(pieces) if p.holder in missing}


def _message(lost: set[str], missing: dict[str, str], pieces: list[Piece], timeout: float) -> str:
    parts = []
    for holder in sorted(lost):
        outs = sorted({p.out for p in pieces if p.holder == holder})
        why = (
            f"has not got them ({missing[holder]})"
            if holder in missing
            else (f"did not answer within {timeout:g} s")
        )
        parts.append(f"{holder} {why}: outputs {', '.join(outs)}")
    holders = " ".join(f"[holder={h}]" for h in sorted(lost))
    return "map outputs cannot be fetched: " + "; ".join(parts) + " " + holders
