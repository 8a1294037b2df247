"""Datasets by URL: every reader fetches only the byte ranges it needs, so no disk is shared.

fsspec does the fetching: http(s) is built in (aiohttp); s3://, gs:// and the rest work once
their fsspec package is installed (`pip install 'shardmill[s3]'` for S3). The master reads a
file's size and header; each worker reads its own shard's rows. A server that ignores range
requests is refused rather than downloaded whole, and a short or cut body is never parsed:
it is an error the shard retries.
"""

from __future__ import annotations

import asyncio
import io
import os
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
import numpy as np

from shardmill import __version__
from shardmill.data.paths import is_url

HEADER_BYTES = 1 << 16  # a .npy header is far smaller: one request reads it
LINE_BLOCK = 1 << 16  # what a readline fetches at a time
CONNECT_TIMEOUT = 10.0  # seconds to reach the server
READ_TIMEOUT = 30.0  # seconds a response may stall


class RemoteError(Exception):
    """A URL that cannot be read as asked; `transient` when trying again may help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class RemoteFile:
    """One file behind a URL: its size, and exact byte ranges of it."""

    def __init__(self, url: str) -> None:
        self.url = url
        options: dict[str, Any] = {}
        if url.lower().startswith(("http://", "https://")):
            import aiohttp  # fsspec's http backend

            # A dead or stalled server is an error in seconds, not a hang of the master; the
            # server's log names who fetched (the worker, or the master reading a header).
            timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
            who = os.environ.get("SHARDMILL_WORKER_ID", "master")
            agent = f"shardmill/{__version__} ({who})"
            options["client_kwargs"] = {"timeout": timeout, "headers": {"User-Agent": agent}}
        try:
            self.fs, self.path = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError) as e:  # an unknown scheme, or its package missing
            raise RemoteError(f"{url}: {e}", transient=False) from e

    def size(self) -> int:
        try:
            return int(self.fs.size(self.path))
        except Exception as e:  # fsspec and its backends raise many kinds: name each
            raise remote_error(self.url, e) from e

    def read(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop), exactly: a short answer is an error, never data."""
        try:
            with self.fs.open(self.path, "rb", cache_type="none") as f:
                f.seek(start)
                data = f.read(stop - start)
        except Exception as e:
            raise remote_error(self.url, e) from e
        if len(data) != stop - start:
            raise RemoteError(
                f"{self.url}: asked for bytes {start}-{stop - 1}, got {len(data)}: the body "
                "was cut short (a dropped connection, or the file changed)",
                transient=True,
            )
        return bytes(data)

    def read_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Several exact ranges, fetched concurrently where the backend can."""
        try:
            parts = self.fs.cat_ranges(
                [self.path] * len(ranges), [a for a, _ in ranges], [b for _, b in ranges]
            )
        except Exception as e:
            raise remote_error(self.url, e) from e
        for (a, b), part in zip(ranges, parts, strict=True):
            if isinstance(part, Exception) or len(part) != b - a:
                raise RemoteError(f"{self.url}: bytes {a}-{b - 1} came back short", transient=True)
        return [bytes(p) for p in parts]


def remote_error(url: str, e: BaseException) -> RemoteError:
    """What went wrong with `url`, in words, and whether a retry can help."""
    if isinstance(e, FileNotFoundError) and e.__cause__ is not None:
        e = e.__cause__  # fsspec calls any failure to stat a URL "not found": say what it was
    status = getattr(e, "status", None) or getattr(e, "code", None)
    text = str(e) or type(e).__name__
    if isinstance(e, FileNotFoundError) or status == 404:
        return RemoteError(f"{url} was not found (HTTP 404); check the URL", transient=False)
    if "support range requests" in text:
        return RemoteError(
            f"{url}: the server does not answer range requests, and each worker reads only "
            "its shard's bytes; serve the file with ranges (nginx, S3 and most servers do) "
            "or put it on storage every worker mounts",
            transient=False,
        )
    if isinstance(status, int) and 400 <= status < 500:
        return RemoteError(f"{url}: HTTP {status} ({text})", transient=False)
    if isinstance(e, OSError | asyncio.TimeoutError | ConnectionError) or status:
        return RemoteError(f"{url} cannot be read: {text}", transient=True)
    if type(e).__module__.startswith("aiohttp"):  # a payload cut mid-body, a reset
        return RemoteError(f"{url}: the transfer failed: {text}", transient=True)
    return RemoteError(f"{url} cannot be read: {type(e).__name__}: {text}", transient=False)


def open_binary(path: str) -> BinaryIO:
    """A local file, or a file behind a URL read with range requests: exact `read(n)`s, and a
    `readline` that fetches LINE_BLOCK bytes at a time (a CSV shard reads its own lines)."""
    if not is_url(path):
        return open(path, "rb")
    remote = RemoteFile(path)
    try:
        f: BinaryIO = remote.fs.open(remote.path, "rb", block_size=LINE_BLOCK, cache_type="none")
    except Exception as e:
        raise remote_error(path, e) from e
    return f


def file_size(path: str) -> int:
    return RemoteFile(path).size() if is_url(path) else os.path.getsize(path)


@dataclass(frozen=True)
class RemoteNpy:
    """A .npy behind a URL: where its rows start, and how they are laid out."""

    url: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran_order: bool
    offset: int  # byte where row 0 starts

    @classmethod
    def open(cls, url: str, *, probe: bool = True) -> RemoteNpy:
        """Its header; with `probe`, also check that the server answers ranges past byte 0."""
        remote = RemoteFile(url)
        size = remote.size()
        head = io.BytesIO(remote.read(0, min(size, HEADER_BYTES)))
        try:
            version = np.lib.format.read_magic(head)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
        except (ValueError, EOFError) as e:
            raise RemoteError(f"{url} is not a readable .npy file: {e}", transient=False) from e
        npy = cls(url, tuple(int(n) for n in shape), np.dtype(dtype), bool(fortran), head.tell())
        if probe and size > 1:
            remote.read(1, 2)  # ranges past byte 0 work (a server without them fails here)
        want = npy.offset + npy.row_bytes * (npy.shape[0] if npy.shape else 1)
        if size < want:
            raise RemoteError(
                f"{url} holds {size} bytes, its header promises {want}", transient=False
            )
        return npy

    @property
    def cols(self) -> int:
        return self.shape[1] if len(self.shape) == 2 else 1

    @property
    def row_bytes(self) -> int:
        return self.cols * self.dtype.itemsize

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a 2-D array: one range request."""
        a, b = self.offset + start * self.row_bytes, self.offset + stop * self.row_bytes
        data = RemoteFile(self.url).read(a, b) if b > a else b""
        return np.frombuffer(data, dtype=self.dtype).reshape(-1, self.cols)

    def take(self, index: np.ndarray) -> np.ndarray:
        """The rows at `index` (sorted), one range request per run of consecutive rows."""
        runs: list[tuple[int, int]] = []
        for i in (int(i) for i in index):
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        row = self.row_bytes
        ranges = [(self.offset + a * row, self.offset + b * row) for a, b in runs]
        parts = RemoteFile(self.url).read_many(ranges) if ranges else []
        return np.frombuffer(b"".join(parts), dtype=self.dtype).reshape(-1, self.cols)
