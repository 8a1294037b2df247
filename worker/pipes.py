"""Length-prefixed frames over a pipe between the agent and its child processes (no pickle)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import BinaryIO

from shardmill.codec import Buffer

_COUNT = struct.Struct("!I")
_LEN = struct.Struct("!Q")
MAX_FRAMES = 1 << 16


def write_frames(out: BinaryIO, frames: Sequence[Buffer]) -> None:
    out.write(_COUNT.pack(len(frames)))
    for frame in frames:
        out.write(_LEN.pack(len(frame)))
        out.write(frame)
    out.flush()


def read_frames(inp: BinaryIO) -> list[bytearray] | None:
    """Read one message; None on a clean EOF before it starts, EOFError if cut off inside it."""
    head = _read_exact(inp, _COUNT.size, allow_eof=True)
    if head is None:
        return None
    (count,) = _COUNT.unpack(head)
    if count > MAX_FRAMES:
        raise EOFError(f"pipe message claims {count} frames")
    frames = []
    for _ in range(count):
        (n,) = _LEN.unpack(_read_exact(inp, _LEN.size) or b"")
        frames.append(_read_exact(inp, n) or bytearray())
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
