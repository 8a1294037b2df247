"""Fetching a reduce shard's pieces straight from the workers that hold them (never through the
master), a page at a time: one socket per holder, one request in flight per stream and at most
one page waiting beside the one in use, so memory stays bounded by pages, not partitions.
A holder that does not answer in time, refuses connections, or no longer has the output, is a
FetchFailed naming it: the pipeline recomputes what it held from the stage before (lineage).
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator
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

REFUSALS = 3  # connections refused in a row: the holder's host answers, its server is gone


@dataclass(frozen=True)
class Piece:
    """One run of one map output, this shard's slice of it: where it lives, what to ask for."""

    holder: str  # the holder's piece server, tcp://host:port
    key: str  # its CURVE public key (z85), "" when insecure
    out: str  # the output's id
    request: dict[str, Any]  # {"run": r, "part": p} or {"run": r, "lo": ..., "hi": ...}


class Streams:
    """Every piece as a stream of pages, fetched ahead by one page (at most one waiting and
    one in flight beside the one in use)."""

    def __init__(self, pieces: list[Piece], token: str, timeout: float, page_bytes: int) -> None:
        self.pieces, self.token, self.timeout = pieces, token, timeout
        self.page_bytes = max(4096, page_bytes)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.peers: dict[str, _Peer] = {}
        self.poller = zmq.Poller()
        self.pages: list[collections.deque[Table]] = [collections.deque() for _ in pieces]
        self.cursor: list[int | None] = [0] * len(pieces)  # next row to ask for; None: all asked
        self.flying = [False] * len(pieces)
        self.missing: dict[str, str] = {}
        self.fetched = 0
        for i in range(len(pieces)):
            self._ask(i)

    def close(self) -> None:
        for peer in self.peers.values():
            peer.close()

    def __enter__(self) -> Streams:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_page(self, i: int) -> Table | None:
        """Stream i's next page, waiting for it if need be; None when the stream has ended."""
        deadline = time.monotonic() + self.timeout
        while not self.pages[i]:
            if not self.flying[i]:
                return None
            self._wait(deadline)
        page = self.pages[i].popleft()
        self._ask(i)
        return page

    def more(self, i: int) -> bool:
        """Whether stream i has pages beyond those taken."""
        return bool(self.pages[i]) or self.flying[i]

    def whole(self, i: int) -> Iterator[Table]:
        while (page := self.next_page(i)) is not None:
            yield page

    def _ask(self, i: int) -> None:
        row = self.cursor[i]
        if row is None or self.flying[i] or self.pages[i]:
            return
        piece = self.pieces[i]
        peer = self.peers.get(piece.holder)
        if peer is None:
            peer = self.peers[piece.holder] = _Peer(self.ctx, piece)
            self.poller.register(peer.sock, zmq.POLLIN)
            self.poller.register(peer.monitor, zmq.POLLIN)
        req = {
            "token": self.token,
            "out": piece.out,
            "i": i,
            "row": row,
            "max_bytes": self.page_bytes,
            **piece.request,
        }
        peer.sock.send(msgpack.packb(req))
        self.flying[i] = True

    def _wait(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or self.missing:
            self._fail()
        by_socket = {id(p.sock): p for p in self.peers.values()}
        for sock, _ in self.poller.poll(int(left * 1000) + 1):
            peer = by_socket.get(id(sock))
            if peer is None:
                for p in self.peers.values():
                    if p.refusals() >= REFUSALS:
                        self.missing.setdefault(p.holder, "its server refuses connections")
                continue
            self._take(peer, sock.recv_multipart(copy=False))

    def _take(self, peer: _Peer, frames: list[Any]) -> None:
        head_raw, *cols = frames
        head = msgpack.unpackb(head_raw.bytes)
        i = head.get("i")
        if not head.get("ok") or not isinstance(i, int) or not 0 <= i < len(self.pieces):
            self.missing[peer.holder] = str(head.get("error", "a reply that names no request"))
            return
        page = {
            name: np.frombuffer(col.buffer, dtype=np.dtype(dt)).copy()
            for name, dt, col in zip(head["names"], head["dtypes"], cols, strict=True)
        }
        self.fetched += sum(int(c.nbytes) for c in page.values())
        self.pages[i].append(page)
        self.flying[i] = False
        self.cursor[i] = head["next"]
        self._ask(i)

    def _fail(self) -> None:
        stuck = {self.pieces[i].holder for i, f in enumerate(self.flying) if f}
        raise FetchFailed(
            _message(stuck | set(self.missing), self.missing, self.pieces, self.timeout)
        )


class _Peer:
    """One holder: the socket fetches go out on, and its monitor, which tells a refused
    connection (a dead server on a live host) at once instead of at the deadline."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], piece: Piece) -> None:
        self.holder = piece.holder
        self.sock = ctx.socket(zmq.DEALER)
        if piece.key:
            public, secret = _own_pair()
            self.sock.curve_publickey = public
            self.sock.curve_secretkey = secret
            self.sock.curve_serverkey = piece.key.encode()
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED)
        self.sock.connect(piece.holder)
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


def _own_pair() -> tuple[bytes, bytes]:
    """A worker's own key pair; elsewhere (a pipeline's driver) a pair made for the call: the
    piece server accepts any key, and a request must name the pipeline's secret token."""
    keys = os.environ.get("SHARDMILL_SHUFFLE_KEYS", "")
    if keys:
        public, secret = zmq.auth.load_certificate(Path(keys) / "worker.key_secret")
        if secret is not None:
            return public, secret
    return zmq.curve_keypair()


def _message(lost: set[str], missing: dict[str, str], pieces: list[Piece], timeout: float) -> str:
    parts = []
    for holder in sorted(lost):
        outs = sorted({p.out for p in pieces if p.holder == holder})
        why = (
            f"has not got them ({missing[holder]})"
            if holder in missing
            else f"did not answer within {timeout:g} s"
        )
        parts.append(f"{holder} {why}: outputs {', '.join(outs)}")
    holders = " ".join(f"[holder={h}]" for h in sorted(lost))
    return "map outputs cannot be fetched: " + "; ".join(parts) + " " + holders


def drop_outputs(
    holders: dict[str, str],
    token: str,
    timeout: float = 1.0,
    *,
    outs: dict[str, list[str]] | None = None,
) -> list[str]:
    """Ask each holder (address -> public key) to drop the pipeline's outputs (with `outs`,
    only those it names per holder); best effort: returns the holders that did not confirm
    (their outputs go when the pipeline ends, or when unused for a while)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    peers = [_Peer(ctx, Piece(h, k, "", {})) for h, k in holders.items()]
    poller = zmq.Poller()
    try:
        for peer in peers:
            ask: dict[str, Any] = {"op": "drop", "token": token}
            if outs is not None:
                ask["outs"] = outs.get(peer.holder, [])
            peer.sock.send(msgpack.packb(ask))
            poller.register(peer.sock, zmq.POLLIN)
        waiting = {id(p.sock): p.holder for p in peers}
        deadline = time.monotonic() + timeout
        while waiting and (left := deadline - time.monotonic()) > 0:
            for sock, _ in poller.poll(int(left * 1000) + 1):
                sock.recv_multipart()
                waiting.pop(id(sock), None)
        return sorted(waiting.values())
    finally:
        for peer in peers:
            peer.close()
