"""Large array frames through shared memory when sender and receiver share a host.

A client next to its master writes the array frames of a big request into one file under
/dev/shm (a *segment*) and sends, instead of those frames, empty placeholders plus a `ShmRef`
per frame: segment name, offset, size. The master maps the segment read-only, takes it over by
renaming it (so a client giving up after a timeout cannot remove it under a running job) and
removes it when the job ends. Workers on the same host get the same references in their tasks
and map just their shard's pages; workers elsewhere get the bytes as ordinary frames.

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

import numpy as np

from shardmill.errors import SharedMemoryError
from shardmill.protocol import ShmRef

SHM_DIR = Path("/dev/shm")
PREFIX = "shardmill-"
_NAME = re.compile(r"shardmill-(?:probe-)?[0-9a-f]{32}\Z")
_ALIGN = 4096  # each frame starts on a page, so a worker maps exactly its shard's pages


def available() -> bool:
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def new_name(kind: str = "") -> str:
    return f"{PREFIX}{kind}{uuid.uuid4().hex}"


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
    return bool(name) and _NAME.match(name) is not None and _owned_file(SHM_DIR / name)


def remove(name: str) -> None:
    if _NAME.match(name):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SHM_DIR / name)


def frame_bytes(frame: Any) -> int:
    return memoryview(frame).nbytes if not isinstance(frame, np.ndarray) else frame.nbytes


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


@dataclass
class _Mapping:
    buf: mmap.mmap
    address: int
    size: int


@dataclass
class Segments:
    """The master's side: segments it has mapped, and how to refer to bytes inside them."""

    maps: dict[str, _Mapping] = field(default_factory=dict)
    owned: set[str] = field(default_factory=set)

    def attach(self, refs: Sequence[ShmRef], frames: list[Any]) -> list[Any]:
        """`frames` with each placeholder replaced by a read-only view of its segment."""
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
            mine = new_name()
            try:
                os.rename(SHM_DIR / name, SHM_DIR / mine)
            except FileNotFoundError:  # the client gave up and removed it: send bytes instead
                self.maps.pop(name, None)
                continue
            self.maps[mine] = self.maps.pop(name)
            self.owned.add(mine)
            held.append(mine)
        return held

    def release(self, names: Sequence[str]) -> None:
        """The job is over: forget the mappings (freed once no frame uses them) and the files."""
        for name in names:
            self.maps.pop(name, None)
            self.owned.discard(name)
            remove(name)

    def close(self) -> None:
        self.release(list(self.owned))
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
        try:
            fd = os.open(SHM_DIR / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            raise SharedMemoryError(
                f"cannot open shared-memory segment {name}: {e.strerror}; the client does not "
                "share /dev/shm with the master"
            ) from e
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


def open_refs(refs: Sequence[ShmRef], frames: list[Any]) -> list[Any]:
    """A worker's side: the frames with each reference replaced by a view of its pages."""
    out = list(frames)
    for ref in refs:
        if not 0 <= ref.frame < len(out) or not _NAME.match(ref.segment):
            raise SharedMemoryError(f"bad shared-memory reference {ref}")
        if ref.size == 0:
            out[ref.frame] = b""
            continue
        base = ref.offset // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
        try:
            fd = os.open(SHM_DIR / ref.segment, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            raise SharedMemoryError(
                f"cannot open shared-memory segment {ref.segment}: {e.strerror} (its job may "
                "have ended, or this worker does not share /dev/shm with the master)"
            ) from e
        try:
            if os.fstat(fd).st_size < ref.offset + ref.size:
                raise SharedMemoryError(f"segment {ref.segment} is shorter than its reference")
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            buf = mmap.mmap(fd, ref.offset + ref.size - base, flags, mmap.PROT_READ, offset=base)
        finally:
            os.close(fd)
        start = ref.offset - base
        out[ref.frame] = memoryview(buf)[start : start + ref.size]
    return out


def _owned_file(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid()


def _bytes_view(frame: Any) -> memoryview:
    if isinstance(frame, np.ndarray):
        arr = frame if frame.flags.c_contiguous else np.ascontiguousarray(frame)
        return arr.reshape(-1).view(np.uint8).data
    return memoryview(frame).cast("B")


def _address(frame: Any) -> int:
    if isinstance(frame, np.ndarray):
        return int(frame.ctypes.data)
    return int(np.frombuffer(frame, dtype=np.uint8).ctypes.data)
