"""Timestamp every ZeroMQ send and receive, poll wake-up and pipe write of a whole process when
SHARDMILL_BENCH_TRACE names a directory.

Only `bench/trace_call.py` puts this directory on PYTHONPATH: the master, the worker agents,
their children (forked: each writes its own file) and the client record `time.perf_counter_ns`
(CLOCK_MONOTONIC, one clock for every process on the machine) without touching the runtime's
code. Each process appends "<ns> <event>" lines to <dir>/<pid>.txt.
"""

from __future__ import annotations

import os

_DIR = os.environ.get("SHARDMILL_BENCH_TRACE")

if _DIR:
    import atexit
    import sys
    import time
    from typing import Any

    import zmq
    from zmq.sugar import poll as _zpoll, socket as _zsocket

    _now = time.perf_counter_ns
    _events: list[tuple[int, str]] = []
    _names: dict[int, str] = {}

    def _dump() -> None:
        if not os.path.isdir(_DIR):  # the tracer's reader is done and removed it
            return
        with open(os.path.join(_DIR, f"{os.getpid()}.txt"), "a") as f:
            f.write("".join(f"{t} {what}\n" for t, what in _events))
        _events.clear()

    def record(what: str) -> None:
        _events.append((_now(), what))
        if len(_events) >= 256:  # a child is killed, not exited: keep most of what it saw
            _dump()

    def _socket_name(sock: Any) -> str:
        """<socket type>@<port of its last bind or connect>: which hop a message is on."""
        name = _names.get(id(sock))
        if name is None:
            try:
                endpoint = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
            except zmq.ZMQError:
                endpoint = "?"
            name = _names[id(sock)] = f"{sock.type}@{endpoint.rsplit(':', 1)[-1]}"
        return name

    _send = _zsocket.Socket.send_multipart
    _recv = _zsocket.Socket.recv_multipart
    _poll = _zpoll.Poller.poll
    _writev = os.writev

    def send_multipart(self: Any, *args: Any, **kwargs: Any) -> Any:
        record("send" + _socket_name(self))
        return _send(self, *args, **kwargs)

    def recv_multipart(self: Any, *args: Any, **kwargs: Any) -> Any:
        frames = _recv(self, *args, **kwargs)
        record("recv" + _socket_name(self))
        return frames

    def poll(self: Any, *args: Any, **kwargs: Any) -> Any:
        ready = _poll(self, *args, **kwargs)
        record("wake")
        return ready

    def writev(fd: int, buffers: Any) -> int:
        record("writev")
        return _writev(fd, buffers)

    _zsocket.Socket.send_multipart = send_multipart  # type: ignore[method-assign]
    _zsocket.Socket.recv_multipart = recv_multipart  # type: ignore[method-assign]
    _zpoll.Poller.poll = poll  # type: ignore[method-assign]
    os.writev = writev
    atexit.register(_dump)
    os.register_at_fork(after_in_child=lambda: (_events.clear(), record("start child")))
    record("start " + " ".join(sys.argv[1:3]))
