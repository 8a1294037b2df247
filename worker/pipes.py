"""Length-prefixed frames over a pipe between the agent and its child processes (no pickle).

One message is `count` (u32), `count` lengths (u64 each), then the frames back to back: the
writer sends it with one writev, the reader takes it in three reads.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import BinaryIO

from shardmill.wire.codec import Buffer

_COUNT = struct.Struct("!I")
MAX_FRAMES = 1 << 16
_IOV_MAX = 1024


def write_frames(out: BinaryIO, frames: Sequence[Buffer]) -> None:
    views = [memoryview(f).cast("B") if memoryview(f).nbytes else b"" for f in frames]
    head = _COUNT.pack(len(views)) + struct.pack(f"!{len(views)}Q", *(len(v) for v in views))
    pending: list[Buffer] = [head, *(v for v in views if len(v))]
    fd = out.fileno()
    while pending:
        written = os.writev(fd, pending[:_IOV_MAX])
        while written:  # drop what was written, keep the tail of a partly written buffer
            first = memoryview(pending[0])
            if written >= len(first):
                written -= len(first)
                pending.pop(0)
            else:
                pending[0] = first[written:]
                written = 0


def read_frames(inp: BinaryIO) -> list[memoryview] | None:
    """Read one message; None on a clean EOF before it starts, EOFError if cut off inside it."""
    head = _read_exact(inp, _COUNT.size, allow_eof=True)
    if head is None:
        return None
    (count,) = _COUNT.unpack(head)
    if count > MAX_FRAMES:
        raise EOFError(f"pipe message claims {count} frames")
    lengths = struct.unpack(f"!{count}Q", _read_exact(inp, 8 * count) or b"")
    body = _read_exact(inp, sum(lengths)) or bytearray()
    frames, offset = [], 0
    view = memoryview(body)
    for n in lengths:  # zero-copy slices of one buffer
        frames.append(view[offset : offset + n])
        offset += n
    return frames


def _read_exact(inp: BinaryIO, n: int, *, allow_eof: bool = False) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = inp.readinto(view[got:])  # type: ignore[attr-defined]
        if not k:
            if got == 0 and allow_eof:
                return None
            raise EOFError(f"pipe closed after {got} of {n} bytes")
        got += k
    return buf
