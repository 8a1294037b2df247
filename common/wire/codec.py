"""Wire format: frame 0 is a msgpack header (one protocol message); NumPy arrays follow as frames.

Values inside a message's `payload` are packed with `pack_value`: plain msgpack, where each
NumPy array is an extension record `(dtype.str, shape, frame index)` and its bytes travel as a
separate zero-copy frame. Every decode failure becomes one `ProtocolError`.

Several messages to one peer may travel as one **bundle** (`bundle`/`unbundle`): a header
`{"kind": "bundle", "v": 1, "counts": [frames of each part]}`, then each part's frames in order.
One send, one receive and one wake-up carry many short tasks or results; each part is still
decoded and handled alone, so a bad one costs only itself. Bundles do not nest.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
from pydantic import ValidationError
from typing_extensions import TypeIs

from shardmill.errors import ProtocolError, VersionMismatch
from shardmill.wire.protocol import MESSAGE_ADAPTER, PROTOCOL_VERSION, Message

if TYPE_CHECKING:
    import numpy as np

ARRAY_EXT = 1
MAX_ARRAY_DIMS = 32
MAX_FRAMES = 65_536
BUNDLE = "bundle"
MAX_BUNDLE_PARTS = 1024  # our roles send at most 256; more is refused whole, answered once

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Decoded:
    """A decoded message and the raw buffers of its array frames."""

    msg: Message
    arrays: list[Buffer] = field(default_factory=list)


@dataclass(frozen=True)
class Packed:
    """A value packed for the wire: msgpack bytes plus the arrays it references."""

    data: bytes
    arrays: list[np.ndarray]


def is_array(obj: object) -> TypeIs[np.ndarray]:
    """Whether `obj` is a NumPy array. NumPy is imported by what makes arrays, not here: where
    it is not loaded (a CLI query), nothing can be one, and the ~0.1 s import is saved."""
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.ndarray)


def is_numpy_scalar(obj: object) -> TypeIs[np.generic]:
    """Whether `obj` is a NumPy scalar (`np.float64(1.0)`); as `is_array`, without importing."""
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.generic)


def encode(msg: Message, arrays: Sequence[np.ndarray | Buffer] = ()) -> list[Buffer]:
    """Turn a message and its array frames into zmq frames."""
    return encode_header(msg.model_dump(mode="python"), arrays)


def encode_header(
    header: dict[str, Any], arrays: Sequence[np.ndarray | Buffer] = ()
) -> list[Buffer]:
    """As `encode`, for a message already dumped to plain data (the master's tasks)."""
    frames: list[Buffer] = [msgpack.packb(header, use_bin_type=True)]
    for arr in arrays:
        frames.append(array_bytes(arr) if is_array(arr) else arr)
    return frames


def bundle(parts: Sequence[Sequence[Any]]) -> list[Any]:
    """Encoded messages to one peer as one zmq message (a single one travels as it is)."""
    if len(parts) == 1:
        return list(parts[0])
    counts = [len(p) for p in parts]
    header = msgpack.packb({"kind": BUNDLE, "v": PROTOCOL_VERSION, "counts": counts})
    return [header, *itertools.chain.from_iterable(parts)]


def bundles(
    parts: Sequence[Sequence[Any]], *, max_parts: int, max_bytes: int
) -> Iterator[list[Any]]:
    """Encoded messages to one peer, in order, as few bundles as the limits allow (a part
    bigger than `max_bytes` travels alone)."""
    group: list[Sequence[Any]] = []
    size = 0
    for part in parts:
        nbytes = sum(memoryview(as_buffer(f)).nbytes for f in part)
        if group and (len(group) == max_parts or size + nbytes > max_bytes):
            yield bundle(group)
            group, size = [], 0
        group.append(part)
        size += nbytes
    if group:
        yield bundle(group)


def unbundle(frames: Sequence[Any]) -> list[Sequence[Any]]:
    """The messages one zmq message holds: itself, or a bundle's parts (its header checked
    here; each part is decoded on its own)."""
    if not frames:
        return [frames]
    try:
        raw = unpack_header(frames[0])  # a peer of another version is refused here
    except VersionMismatch:
        raise
    except ProtocolError:  # not our business here: decode() names what is wrong with it
        return [frames]
    if raw.get("kind") != BUNDLE:
        return [frames]
    counts = raw.get("counts")
    if isinstance(counts, list) and len(counts) > MAX_BUNDLE_PARTS:
        raise ProtocolError(f"a bundle of {len(counts)} messages; the limit is {MAX_BUNDLE_PARTS}")
    if (
        not isinstance(counts, list)
        or not all(isinstance(n, int) and n >= 1 for n in counts)
        or sum(counts) != len(frames) - 1
    ):
        raise ProtocolError(
            f"bad bundle header: counts {counts!r} must be positive frame counts adding up to "
            f"the {len(frames) - 1} frames that follow it"
        )
    parts, start = [], 1
    for n in counts:
        parts.append(frames[start : start + n])
        start += n
    return parts


def _check_version(version: object) -> None:
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"peer speaks protocol version {version!r}, this side speaks {PROTOCOL_VERSION}; "
            "run the same shardmill version on the master, workers and clients"
        )


def decode(frames: Sequence[Any]) -> Decoded:
    """Parse zmq frames (bytes or zmq.Frame) into a validated message; raise ProtocolError."""
    if not frames:
        raise ProtocolError("empty message: expected a msgpack header frame")
    if len(frames) > MAX_FRAMES:
        raise ProtocolError(f"{len(frames)} frames in one message; the limit is {MAX_FRAMES}")
    buffers = [as_buffer(f) for f in frames]
    raw = unpack_header(buffers[0])
    if raw.get("kind") == BUNDLE:
        raise ProtocolError(
            "a bundle where one message was expected: bundles carry messages between the "
            "master and its workers, and do not nest"
        )
    try:
        msg = MESSAGE_ADAPTER.validate_python(raw)
    except ValidationError as e:
        kind = raw.get("kind")
        raise ProtocolError(f"invalid {kind!r} message: {_short(e)}") from e
    return Decoded(msg, buffers[1:])


def unpack_header(frame: Any) -> dict[str, Any]:
    """A message's header frame as plain data, its protocol version checked; not validated
    (`decode` does that), for a reader that needs a few fields only (an agent's tasks)."""
    try:
        raw = msgpack.unpackb(as_buffer(frame), raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"header frame is not valid msgpack: {e}") from e
    if not isinstance(raw, dict):
        raise ProtocolError(f"header must be a map, got {type(raw).__name__}")
    _check_version(raw.get("v"))
    return raw


def check_size(frames: Sequence[Any], limit: int) -> None:
    """Refuse a message whose frames add up to more than `limit` bytes."""
    size = sum(memoryview(as_buffer(f)).nbytes for f in frames)
    if size > limit:
        raise ProtocolError(
            f"message of {size:,} bytes exceeds the limit of {limit:,} (max_message_bytes); "
            "send large data by reference or in smaller pieces"
        )


def decode_checked(
    frames: Sequence[Any], *, max_bytes: int, kinds: frozenset[str], expected: str
) -> Decoded:
    """Size limit, decode, and a kind this socket serves: one ProtocolError for any failure."""
    check_size(frames, max_bytes)
    decoded = decode(frames)
    if decoded.msg.kind not in kinds:
        raise ProtocolError(f"{decoded.msg.kind!r} is not {expected}")
    return decoded


def peek_kind(header: Buffer) -> str:
    """A message's kind from its header frame, without validating the rest (for a relay that
    forwards it: the receiver decodes it in full)."""
    kind = unpack_header(header).get("kind")
    if not isinstance(kind, str):
        raise ProtocolError("header has no kind")
    return kind


def peek_req(frames: Sequence[Any]) -> int:
    """The request id in a header we refuse anyway, so the error reply reaches its caller."""
    try:
        header = msgpack.unpackb(as_buffer(frames[0]), raw=False)
        req = header.get("req", 0) if isinstance(header, dict) else 0
        return req if isinstance(req, int) and 0 <= req < 2**63 else 0
    except Exception:  # garbage has no request id
        return 0


def pack_value(obj: object) -> Packed:
    """Pack msgpack-able values and NumPy arrays; arrays become references to extra frames."""
    arrays: list[np.ndarray] = []

    def default(o: object) -> object:
        if is_array(o):
            if o.dtype.hasobject:
                raise TypeError("object arrays cannot be sent; use a numeric or bytes dtype")
            arr = o if o.flags.c_contiguous else o.copy(order="C")
            arrays.append(arr)
            meta = msgpack.packb([arr.dtype.str, list(arr.shape), len(arrays) - 1])
            return msgpack.ExtType(ARRAY_EXT, meta)
        if is_numpy_scalar(o):
            return o.item()
        if isinstance(o, tuple):
            return list(o)
        raise TypeError(
            f"cannot send a {type(o).__name__}: only None, bool, int, float, str, bytes, "
            "lists, dicts and NumPy arrays travel (no pickle)"
        )

    data = msgpack.packb(obj, default=default, use_bin_type=True, strict_types=False)
    return Packed(data, arrays)


def unpack_value(data: Buffer, arrays: Sequence[Buffer] = ()) -> Any:
    """Inverse of `pack_value`; arrays are rebuilt read-only over the received buffers."""

    def ext_hook(code: int, meta: bytes) -> object:
        if code != ARRAY_EXT:
            raise ProtocolError(f"unknown msgpack extension type {code}")
        return _array_from_meta(meta, arrays)

    try:
        return msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as e:
        raise ProtocolError(f"payload is not valid packed data: {e}") from e


def _array_from_meta(meta: bytes, arrays: Sequence[Buffer]) -> np.ndarray:
    import numpy as np

    try:
        dtype_str, shape, index = msgpack.unpackb(meta)
        dtype = _dtype(dtype_str)
        shape = tuple(int(n) for n in shape)
    except Exception as e:
        raise ProtocolError(f"bad array reference: {e}") from e
    if len(shape) > MAX_ARRAY_DIMS or any(n < 0 for n in shape):
        raise ProtocolError(f"bad array shape {shape}")
    if not isinstance(index, int) or not 0 <= index < len(arrays):
        raise ProtocolError(f"array frame {index!r} is missing ({len(arrays)} array frames)")
    buf = arrays[index]
    expected = math.prod(shape) * dtype.itemsize
    size = memoryview(buf).nbytes
    if size != expected:
        raise ProtocolError(
            f"array frame {index} holds {size} bytes, {dtype} {shape} needs {expected}"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


_DTYPES: dict[str, np.dtype[Any]] = {}


def _dtype(name: str) -> np.dtype[Any]:
    """np.dtype(name), parsed once per name (a result of 8 arrays parses 8 names per shard)."""
    import numpy as np

    dtype = _DTYPES.get(name)
    if dtype is None:
        dtype = np.dtype(name)
        if dtype.hasobject:
            raise ProtocolError("object arrays are refused")
        if len(_DTYPES) < 256:  # a peer may send any number of names: keep the common ones
            _DTYPES[name] = dtype
    return dtype


def to_bytes(buf: np.ndarray | Buffer) -> bytes:
    """A copy of an array's or a frame's bytes (for storage)."""
    if is_array(buf):
        return bytes(array_bytes(buf))
    return bytes(memoryview(buf).cast("B")) if memoryview(buf).nbytes else b""


def array_bytes(arr: np.ndarray) -> memoryview:
    """An array's bytes as a flat view, without a copy unless it is not C-contiguous (empty
    and 0-d arrays included)."""
    import numpy as np

    flat = arr if arr.flags.c_contiguous else arr.copy(order="C")
    return flat.reshape(-1).view(np.uint8).data


_BUFFERS = (bytes, memoryview, bytearray)  # a tuple: `bytes | ...` is built at every call


def as_buffer(frame: Any) -> Buffer:
    """A frame's bytes without a copy: a received zmq.Frame as a memoryview of its memory."""
    if isinstance(frame, _BUFFERS):
        return frame
    buf = getattr(frame, "buffer", None)  # zmq.Frame received with copy=False
    if buf is not None:
        return memoryview(buf)
    raise ProtocolError(f"unexpected frame type {type(frame).__name__}")


def _short(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
