"""A worker's map outputs on its local disk, and the server its peers fetch them from.

A map output is one directory per (pipeline token, output id): a column per `.npy` file, its
rows grouped by partition (hash outputs, with the partition offsets in `meta`) or sorted by key
(range outputs, cut at fetch time by the splitters the reduce side names). The master never
sees these bytes: it keeps only where each output lives. The agent runs `PieceServer` on a
socket of its own (CURVE with the worker's key pair, like every socket); a fetch must name the
pipeline's token, which only that pipeline's tasks carry.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from shardmill.errors import BadInput
from shardmill.pipeline.tables import Table

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def _checked(*parts: str) -> None:
    for part in parts:
        if not _NAME.match(part):
            raise ValueError(f"not a valid token or output id: {part!r}")


def write_output(root: Path, token: str, out_id: str, table: Table, meta: dict[str, Any]) -> int:
    """Write `table` (already grouped or sorted) as output `out_id`; returns the bytes written.
    A full disk fails the shard with the directory named and removes what it wrote."""
    _checked(token, out_id)
    final = root / token / out_id
    tmp = root / token / f".{out_id}.tmp"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for i, col in enumerate(table.values()):
            np.save(tmp / f"{i}.npy", col, allow_pickle=False)
        names = {**meta, "names": list(table)}
        (tmp / "meta").write_bytes(msgpack.packb(names))
        tmp.rename(final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        why = "is full" if full else f"cannot be written ({e.strerror or e})"
        raise BadInput(
            f"the worker's shuffle directory {root} {why} while spilling map output "
            f"{out_id}; free space there or point the worker's --shuffle-dir at a larger disk",
            retryable=True,
        ) from e
    return sum(int(c.nbytes) for c in table.values())


def read_piece(root: Path, token: str, out_id: str, request: dict[str, Any]) -> Table:
    """Rows of one output: partition `part` of a hash output, or keys in [lo, hi) of a range
    output (None: unbounded)."""
    _checked(token, out_id)
    where = root / token / out_id
    meta = msgpack.unpackb((where / "meta").read_bytes())
    cols = [np.load(where / f"{i}.npy", mmap_mode="r") for i in range(len(meta["names"]))]
    if meta.get("offsets") is not None:
        part = int(request["part"])
        a, b = meta["offsets"][part], meta["offsets"][part + 1]
    else:
        key = cols[meta["names"].index(meta["key"])]
        lo, hi = request.get("lo"), request.get("hi")
        a = 0 if lo is None else int(np.searchsorted(key, np.asarray(lo, key.dtype), "left"))
        b = len(key) if hi is None else int(np.searchsorted(key, np.asarray(hi, key.dtype), "left"))
    return {n: np.ascontiguousarray(c[a:b]) for n, c in zip(meta["names"], cols, strict=True)}


def _index(req: Any) -> Any:
    return req.get("i") if isinstance(req, dict) else None


def drop_token(root: Path, token: str) -> None:
    _checked(token)
    shutil.rmtree(root / token, ignore_errors=True)


class PieceServer:
    """Serves map outputs to peers from a thread of its own (its own socket, never shared)."""

    def __init__(self, root: Path, sock: zmq.Socket[bytes]) -> None:
        self.root = root
        self.sock = sock
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="piece-server", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self.sock.poll(200, zmq.POLLIN):
                    frames = self.sock.recv_multipart(copy=True)
                    self._answer(frames)
        finally:
            self.sock.close(linger=0)

    def _answer(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return  # not a fetch: nothing to answer, and nothing a peer waits for
        identity, raw = frames
        req: Any = {}
        try:
            req = msgpack.unpackb(raw)
            table = read_piece(self.root, str(req["token"]), str(req["out"]), req)
        except FileNotFoundError:
            self._reply(identity, {"ok": False, "error": "missing", "i": _index(req)}, [])
            return
        except Exception as e:  # a peer's bad request: answer it, and serve the next one
            log.warning("shuffle fetch refused: %s", e)
            self._reply(identity, {"ok": False, "error": f"bad request: {e}", "i": _index(req)}, [])
            return
        cols = list(table.values())
        head = {
            "ok": True,
            "i": req.get("i"),
            "names": list(table),
            "dtypes": [c.dtype.str for c in cols],
        }
        self._reply(identity, head, cols)

    def _reply(self, identity: bytes, head: dict[str, Any], cols: list[np.ndarray]) -> None:
        frames: list[Any] = [identity, msgpack.packb(head), *cols]
        self.sock.send_multipart(frames, copy=False)
