"""A worker's map outputs on its local disk, and the server its peers fetch them from.

A map output is a directory per (pipeline token, output id) holding one or more *runs*: each a
column per `.npy` file, its rows grouped by partition (hash outputs: the partition offsets in
`offsets.npy`) or sorted by key (range outputs: cut at fetch time by the reduce side's
splitters). A map shard spills a run whenever its buffers pass its byte budget, so memory stays
bounded by bytes whatever the shard's size. Fetches are paged: a request names the run, the
slice and a row to start from, and is answered with at most `max_bytes` of rows and where to go
on, so neither side holds more than a page. The master never sees these bytes: it keeps only
where each output lives. A fetch must name the pipeline's token, which only its tasks carry.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import threading
import time
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


class OutputWriter:
    """Writes one map output run by run; `finish` makes it visible to fetches at once."""

    def __init__(self, root: Path, token: str, out_id: str, where: str) -> None:
        _checked(token, out_id)
        self.root, self.where, self.out_id = root, where, out_id
        self.final = root / token / out_id
        self.tmp = root / token / f".{out_id}.tmp"
        self.runs = 0
        self.bytes = 0
        self.names: list[str] = []
        # What was written, byte for byte: a recomputed output that differs from the one it
        # replaces comes from a function that is not deterministic (see the driver).
        self.digest = hashlib.blake2b(digest_size=16)

    def run(self, table: Table, offsets: np.ndarray | None = None) -> None:
        with self._disk(sum(int(c.nbytes) for c in table.values())):
            run = self.tmp / f"r{self.runs}"
            run.mkdir(parents=True)
            for i, (name, col) in enumerate(table.items()):
                np.save(run / f"{i}.npy", col, allow_pickle=False)
                self.digest.update(f"{name}:{col.dtype.str}:{len(col)}".encode())
                self.digest.update(np.ascontiguousarray(col).data)
            if offsets is not None:
                np.save(run / "offsets.npy", offsets.astype(np.int64), allow_pickle=False)
        self.names = list(table)
        self.runs += 1
        self.bytes += sum(int(c.nbytes) for c in table.values())

    def finish(self, meta: dict[str, Any]) -> None:
        with self._disk(4096):
            self.tmp.mkdir(parents=True, exist_ok=True)
            (self.tmp / "meta").write_bytes(
                msgpack.packb({**meta, "names": self.names, "runs": self.runs})
            )
            self.tmp.rename(self.final)

    def _disk(self, need: int) -> _DiskGuard:
        return _DiskGuard(self, need)


class _DiskGuard:
    """A full disk fails the shard with the directory named, and removes what it wrote.
    (NumPy reports a short write without an errno: then the free space tells.)"""

    def __init__(self, writer: OutputWriter, need: int) -> None:
        self.w, self.need = writer, need

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: Any) -> None:
        if not isinstance(e, OSError):
            return
        shutil.rmtree(self.w.tmp, ignore_errors=True)
        full = e.errno in (errno.ENOSPC, errno.EDQUOT) or (
            e.errno is None and shutil.disk_usage(self.w.root).free < self.need
        )
        why = "is full" if full else f"cannot be written ({e.strerror or e})"
        raise BadInput(
            f"{self.w.where}: the worker's shuffle directory {self.w.root} {why} while spilling "
            f"map output {self.w.out_id}; free space there or point the worker's --shuffle-dir "
            "at a larger disk",
            retryable=True,
        ) from e


def read_page(root: Path, token: str, request: dict[str, Any]) -> tuple[Table, int | None]:
    """One page of one run's slice: partition `part` of a hash output, or keys in [lo, hi) of
    a range output (None: unbounded), from row `row` of the slice, at most `max_bytes` of
    rows (at least one). Returns the rows and the row to ask for next (None: the end)."""
    out_id = str(request["out"])
    _checked(token, out_id)
    where = root / token / out_id
    meta = msgpack.unpackb((where / "meta").read_bytes())
    names: list[str] = meta["names"]
    run = int(request.get("run", 0))
    if not 0 <= run < int(meta["runs"]):
        raise ValueError(f"output {out_id} has {meta['runs']} runs, not run {run}")
    cols = [np.load(where / f"r{run}" / f"{i}.npy", mmap_mode="r") for i in range(len(names))]
    a, b = _slice(where / f"r{run}", meta, names, cols, request)
    start = a + int(request.get("row", 0))
    width = sum(c.dtype.itemsize for c in cols) or 1
    end = min(b, start + max(1, int(request.get("max_bytes", 1 << 30)) // width))
    # A copy, not a view of the file's mapping: a view would keep the mapping (and every page
    # of it a fetch touched) in the agent's memory until ZeroMQ has sent it.
    page = {n: np.array(c[start:end]) for n, c in zip(names, cols, strict=True)}
    return page, (end - a if end < b else None)


def _slice(
    run: Path, meta: dict[str, Any], names: list[str], cols: list[np.ndarray], req: dict[str, Any]
) -> tuple[int, int]:
    if meta["kind"] == "hash":
        offsets = np.load(run / "offsets.npy")
        part = int(req["part"])
        return int(offsets[part]), int(offsets[part + 1])
    key = cols[names.index(meta["key"])] if names else np.zeros(0)
    lo, hi = req.get("lo"), req.get("hi")
    a = 0 if lo is None else int(np.searchsorted(key, np.asarray(lo, key.dtype), "left"))
    b = len(key) if hi is None else int(np.searchsorted(key, np.asarray(hi, key.dtype), "left"))
    return a, max(a, b)


def drop_token(root: Path, token: str, outs: list[str] | None = None) -> None:
    """A pipeline's outputs, all of them or those named, removed."""
    _checked(token)
    if outs is None:
        shutil.rmtree(root / token, ignore_errors=True)
        return
    for out in outs:
        _checked(str(out))
        shutil.rmtree(root / token / str(out), ignore_errors=True)


COUNT_EVERY = 2.0  # seconds between counts of the bytes a worker's shuffle directory holds


def held_bytes(root: Path) -> int:
    """Bytes of the outputs under `root`; what is dropped or renamed while it counts is
    passed over (os.walk ignores a directory gone mid-walk; pathlib's glob raises)."""
    total = 0
    for top, _, files in os.walk(root):
        for name in files:
            if name.endswith(".npy"):
                try:
                    total += os.stat(os.path.join(top, name)).st_size
                except OSError:  # dropped meanwhile
                    continue
    return total


def sweep(root: Path, ttl: float, now: float) -> list[str]:
    """Remove the outputs of pipelines unused for `ttl` seconds (a driver that died never
    said it was done); returns their tokens."""
    gone = []
    for entry in root.iterdir() if root.exists() else []:
        try:
            idle = now - entry.stat().st_mtime
        except OSError:
            continue
        if entry.is_dir() and _NAME.match(entry.name) and idle > ttl:
            shutil.rmtree(entry, ignore_errors=True)
            gone.append(entry.name)
    return gone


class PieceServer:
    """Serves map outputs to peers from a thread of its own (its own socket, never shared),
    drops a pipeline's outputs when its driver says it is done, and sweeps those unused for
    `ttl` seconds."""

    def __init__(self, root: Path, sock: zmq.Socket[bytes], ttl: float = 3600.0) -> None:
        self.root = root
        self.sock = sock
        self.ttl = ttl
        self.bytes = 0  # what its directory holds, measured every few seconds (heartbeats say)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="piece-server", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        next_sweep = time.monotonic() + min(60.0, self.ttl)
        next_count = 0.0
        try:
            while not self._stop.is_set():
                if self.sock.poll(200, zmq.POLLIN):
                    self._answer(self.sock.recv_multipart(copy=True))
                if time.monotonic() >= next_count:
                    next_count = time.monotonic() + COUNT_EVERY
                    self.bytes = held_bytes(self.root)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + min(60.0, self.ttl)
                    for token in sweep(self.root, self.ttl, time.time()):
                        log.info(
                            "removed pipeline %s's map outputs, unused for %g s", token, self.ttl
                        )
        finally:
            self.sock.close(linger=0)

    def _answer(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return  # not a fetch: nothing to answer, and nothing a peer waits for
        identity, raw = frames
        req: Any = {}
        try:
            req = msgpack.unpackb(raw)
            if req.get("op") == "drop":  # the pipeline is over, or a wave was absorbed
                drop_token(self.root, str(req["token"]), req.get("outs"))
                self._reply(identity, {"ok": True, "i": _index(req)}, [])
                return
            os.utime(self.root / str(req["token"]))  # in use: not swept
            page, more = read_page(self.root, str(req["token"]), req)
        except FileNotFoundError:
            self._reply(identity, {"ok": False, "error": "missing", "i": _index(req)}, [])
            return
        except Exception as e:  # a peer's bad request: answer it, and serve the next one
            log.warning("shuffle fetch refused: %s", e)
            self._reply(identity, {"ok": False, "error": f"bad request: {e}", "i": _index(req)}, [])
            return
        cols = list(page.values())
        head = {
            "ok": True,
            "i": req.get("i"),
            "next": more,
            "names": list(page),
            "dtypes": [c.dtype.str for c in cols],
        }
        self._reply(identity, head, cols)

    def _reply(self, identity: bytes, head: dict[str, Any], cols: list[np.ndarray]) -> None:
        frames: list[Any] = [identity, msgpack.packb(head), *cols]
        self.sock.send_multipart(frames, copy=False)


def _index(req: Any) -> Any:
    return req.get("i") if isinstance(req, dict) else None
