"""Large array frames through shared memory when sender and receiver share a host.

A client next to its master writes the array frames of a big request into one file under
/dev/shm (a *segment*) and sends, instead of those frames, empty placeholders plus a `ShmRef`
per frame: segment name, offset, size. The master maps the segment read-only, takes it over by
renaming it (so a client giving up after a timeout cannot remove it under a running job) and
removes it when the job ends. Workers on the same host get the same references in their tasks
and map just their shard's pages; workers elsewhere get the bytes as ordinary frames.

Fresh tmpfs pages cost more than the copy into them (zeroing and mapping: 0.2 s per GB here),
so the master does not delete a finished job's segment at once: it renames it into a *pool*
(`shardmill-free-<hex>`, bounded in bytes and idle time) and the next big request claims it
by renaming it back, overwriting pages that already exist. Children keep their last mapping
and reuse it when the next task's segment is the same file (same inode).

Who shares memory with whom is found out, never assumed: the client asks the master to look for
a probe file it created (`Ping.shm_probe`), and each worker names a probe in its READY. Only
files named `shardmill-<32 hex>` that are regular files owned by this user are ever opened, so a
peer cannot make the master read anything else; a peer that can create such a file runs as the
same user on the same host, and could signal the master anyway.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import stat
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardmill.errors import SharedMemoryError
from shardmill.wire.codec import array_bytes, is_array
from shardmill.wire.protocol import ShmRef

SHM_DIR = Path("/dev/shm")
PREFIX = "shardmill-"
_NAME = re.compile(r"shardmill-(?:probe-|free-)?[0-9a-f]{32}\Z")
FREE = "free-"
_ALIGN = 4096  # each frame starts on a page, so a worker maps exactly its shard's pages


def available() -> bool:
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def new_name(kind: str = "", tag: str = "") -> str:
    """A fresh segment name; a master's own begin with its tag (see Segments.tag)."""
    return f"{PREFIX}{kind}{tag}{uuid.uuid4().hex[len(tag) :]}"


def create_probe() -> str | None:
    """An empty file another process can look for; None where there is no /dev/shm."""
    if not available():
        return None
    name = new_name("probe-")
    try:
        os.close(os.open(SHM_DIR / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:  # full or read-only: then we simply do not use shared memory
        return None
    return name


def probe_seen(name: str) -> bool:
    """Whether the probe `name` (made by a peer) is visible here: we share its /dev/shm."""
    if not name.startswith(PREFIX + "probe-") or _NAME.match(name) is None:
        return False  # only a probe: a peer must not make us look at (or delete) a segment
    return _owned_file(SHM_DIR / name)


def remove(name: str) -> None:
    if _NAME.match(name):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SHM_DIR / name)


def frame_bytes(frame: Any) -> int:
    return frame.nbytes if is_array(frame) else memoryview(frame).nbytes


def write_segment(
    frames: Sequence[Any], *, min_frame: int
) -> tuple[str, list[Any], list[ShmRef]] | None:
    """Write the frames of at least `min_frame` bytes to a new segment; None if none is big."""
    big = [i for i, f in enumerate(frames) if frame_bytes(f) >= min_frame]
    if not big:
        return None
    name = new_name()
    refs, offset = [], 0
    for i in big:
        size = frame_bytes(frames[i])
        refs.append(ShmRef(frame=i, segment=name, offset=offset, size=size))
        offset += -(-size // _ALIGN) * _ALIGN
    fd = _claim_pooled(name, offset)
    if fd is None:
        fd = os.open(SHM_DIR / name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, offset)
        for ref in refs:
            view = _bytes_view(frames[ref.frame])
            written = 0
            while written < ref.size:  # pwrite may write less than asked
                written += os.pwrite(fd, view[written:], ref.offset + written)
    except BaseException:
        os.close(fd)
        remove(name)
        raise
    os.close(fd)
    out = list(frames)
    for ref in refs:
        out[ref.frame] = b""
    return name, out, refs


def _claim_pooled(name: str, size: int) -> int | None:
    """Take a pooled segment (the smallest that fits, else the biggest) by renaming it to `name`."""
    pooled = []
    with os.scandir(SHM_DIR) as entries:
        for entry in entries:
            if entry.name.startswith(PREFIX + FREE) and _NAME.match(entry.name):
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid():
                        pooled.append((info.st_size < size, abs(info.st_size - size), entry.name))
    for _, _, free in sorted(pooled):
        try:
            os.rename(SHM_DIR / free, SHM_DIR / name)  # atomic: one claimant wins
        except FileNotFoundError:
            continue
        return os.open(SHM_DIR / name, os.O_RDWR | os.O_NOFOLLOW)
    return None


@dataclass
class _Mapping:
    buf: mmap.mmap
    address: int
    size: int


@dataclass
class Segments:
    """The master's side: segments it has mapped, and how to refer to bytes inside them."""

    pool_bytes: int = 0  # finished jobs' segments kept for reuse, at most this many bytes...
    pool_idle: float = 60.0  # ...and for at most this long
    # Names of the segments this master holds begin with `tag`. With a state directory the tag
    # is derived from it, so a master restarted on that directory (one at a time: it is locked)
    # finds and deletes what a killed predecessor left; its jobs' inputs are in the state dir.
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    maps: dict[str, _Mapping] = field(default_factory=dict)
    owned: set[str] = field(default_factory=set)
    pool: dict[str, tuple[int, float]] = field(default_factory=dict)  # name: (bytes, since)

    def attach(self, refs: Sequence[ShmRef], frames: list[Any]) -> list[Any]:
        """`frames` with each placeholder replaced by a read-only view of its segment."""
        self.drop_unowned()
        out = list(frames)
        for ref in refs:
            if not 0 <= ref.frame < len(out) or memoryview(out[ref.frame]).nbytes:
                raise SharedMemoryError(f"shm ref to frame {ref.frame}: no empty frame there")
            mapping = self.maps.get(ref.segment) or self._map(ref.segment)
            if ref.offset + ref.size > mapping.size:
                raise SharedMemoryError(
                    f"segment {ref.segment} holds {mapping.size:,} bytes; a frame claims "
                    f"[{ref.offset:,}, {ref.offset + ref.size:,})"
                )
            out[ref.frame] = memoryview(mapping.buf)[ref.offset : ref.offset + ref.size]
        return out

    def adopt(self, names: Sequence[str]) -> list[str]:
        """Take the client's segments over (rename to our own names); the names we now hold."""
        held = []
        for name in dict.fromkeys(names):
            mine = new_name(tag=self.tag)
            try:
                os.rename(SHM_DIR / name, SHM_DIR / mine)
            except FileNotFoundError:  # the client gave up and removed it: send bytes instead
                self.maps.pop(name, None)
                continue
            self.maps[mine] = self.maps.pop(name)
            self.owned.add(mine)
            held.append(mine)
        return held

    def drop_unowned(self) -> None:
        """Forget mappings of a request that was refused after `attach` (the client deletes it)."""
        for name in [n for n in self.maps if n not in self.owned]:
            del self.maps[name]

    def release(self, names: Sequence[str], now: float) -> None:
        """The job is over: forget the mappings, and pool the files (or delete them)."""
        if not names:  # most jobs: nothing came by shared memory, nothing to look at
            return
        self.pool = {n: v for n, v in self.pool.items() if (SHM_DIR / n).exists()}  # claimed?
        for name in names:
            mapping = self.maps.pop(name, None)
            self.owned.discard(name)
            size = mapping.size if mapping else 0
            if size and sum(b for b, _ in self.pool.values()) + size <= self.pool_bytes:
                free = new_name(FREE, self.tag)
                with contextlib.suppress(FileNotFoundError):
                    os.rename(SHM_DIR / name, SHM_DIR / free)
                    self.pool[free] = (size, now)
                    continue
            remove(name)

    def expire(self, now: float) -> None:
        """Delete pooled segments nobody claimed within `pool_idle` seconds."""
        for name, (_, since) in list(self.pool.items()):
            if now - since >= self.pool_idle:
                del self.pool[name]
                remove(name)

    def remove_leftovers(self) -> list[str]:
        """Delete segments with our tag that no one holds: a killed predecessor's."""
        gone = []
        for kind in ("", FREE):
            for path in SHM_DIR.glob(f"{PREFIX}{kind}{self.tag}*"):
                if path.name not in self.owned and path.name not in self.pool:
                    remove(path.name)
                    gone.append(path.name)
        return gone

    def close(self) -> None:
        """Delete every segment we hold or pooled (a resumed job's inputs are in the state dir)."""
        for name in [*self.owned, *self.pool]:
            remove(name)
        self.owned.clear()
        self.pool.clear()
        self.maps.clear()

    def refs(self, frames: Sequence[Any]) -> tuple[list[Any], list[ShmRef]]:
        """Frames for a peer that shares our memory: those inside a segment become refs."""
        out, refs = list(frames), list[ShmRef]()
        if not self.owned:
            return out, refs
        for i, frame in enumerate(frames):
            size = frame_bytes(frame)
            if size == 0:
                continue
            address = _address(frame)
            for name in self.owned:
                m = self.maps[name]
                offset = address - m.address
                if offset >= 0 and offset + size <= m.size:
                    refs.append(ShmRef(frame=i, segment=name, offset=offset, size=size))
                    out[i] = b""
                    break
        return out, refs

    def _map(self, name: str) -> _Mapping:
        if not _NAME.match(name):
            raise SharedMemoryError(f"{name!r} is not a shardmill shared-memory segment name")
        fd = _open(name, "; the client does not share /dev/shm with the master")
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                raise SharedMemoryError(f"segment {name} is not a regular file of this user")
            if info.st_size == 0:
                raise SharedMemoryError(f"segment {name} is empty")
            buf = mmap.mmap(fd, info.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        mapping = _Mapping(buf, _address(memoryview(buf)), info.st_size)
        self.maps[name] = mapping
        return mapping


class WorkerMaps:
    """A worker child's side: maps the segments its tasks name.

    The last mapping is kept: the next shard of the same job, or of a later job whose segment is
    the same pooled file (same inode), reads pages already in this process's page tables. Only
    one is kept, so a deleted segment's memory is pinned by at most one mapping per child.
    """

    def __init__(self) -> None:
        self._last: tuple[tuple[int, int], mmap.mmap, int] | None = None  # (dev, ino), map, len

    def open(self, refs: Sequence[ShmRef], frames: list[Any]) -> list[Any]:
        """The frames with each reference replaced by a read-only view of its pages."""
        out = list(frames)
        for ref in refs:
            if not 0 <= ref.frame < len(out) or not _NAME.match(ref.segment):
                raise SharedMemoryError(f"bad shared-memory reference {ref}")
            out[ref.frame] = self._view(ref) if ref.size else b""
        return out

    def _view(self, ref: ShmRef) -> memoryview:
        hint = " (its job may have ended, or this worker does not share /dev/shm with the master)"
        fd = _open(ref.segment, hint)
        try:
            info = os.fstat(fd)
            end = ref.offset + ref.size
            if info.st_size < end:
                raise SharedMemoryError(f"segment {ref.segment} is shorter than its reference")
            last = self._last
            if last is None or last[0] != (info.st_dev, info.st_ino) or last[2] < end:
                self._last = None  # drop the old mapping before making a new one
                buf = mmap.mmap(fd, info.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
                last = self._last = ((info.st_dev, info.st_ino), buf, info.st_size)
        finally:
            os.close(fd)
        _populate(last[1], ref.offset, ref.size)
        return memoryview(last[1])[ref.offset : end]


_MADV_POPULATE_READ = 22  # Linux 5.14+: fault a range in with one call, not a fault per page


def _populate(buf: mmap.mmap, offset: int, size: int) -> None:
    start = offset // mmap.PAGESIZE * mmap.PAGESIZE
    with contextlib.suppress(OSError, ValueError):  # older kernels: pages fault in as read
        buf.madvise(_MADV_POPULATE_READ, start, offset + size - start)


def _open(name: str, hint: str) -> int:
    """A segment opened read-only, never through a symlink; SharedMemoryError naming it if not."""
    try:
        return os.open(SHM_DIR / name, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise SharedMemoryError(
            f"cannot open shared-memory segment {name}: {e.strerror}{hint}"
        ) from e


def _owned_file(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid()


def _bytes_view(frame: Any) -> memoryview:
    return array_bytes(frame) if is_array(frame) else memoryview(frame).cast("B")


def _address(frame: Any) -> int:
    import numpy as np

    if isinstance(frame, np.ndarray):
        return int(frame.ctypes.data)
    return int(np.frombuffer(frame, dtype=np.uint8).ctypes.data)
