"""Messages between a primary master and its standby, on the standby's replication socket.

Their own union, apart from protocol.py: only masters speak them, on a socket of their own
(see docs/standby.md). A commit is the primary's SQLite statements since the last one, as
msgpack, with the contents of the blob files they reference; the standby applies it in one
transaction and answers Applied before the primary lets anyone hear of the commit's effect.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgpack
from pydantic import Field, TypeAdapter

from shardmill.wire.spec import Frozen

REPLICATION_VERSION = 1


class _Replication(Frozen):
    v: int = REPLICATION_VERSION
    epoch: int = 0  # the primary's term: a standby that knows a higher one refuses it
    seq: int = 0  # the primary's commit number, echoed by the reply


class Snapshot(_Replication):
    """The whole state: the database as one file, and each blob file it references."""

    kind: Literal["snapshot"] = "snapshot"
    db: bytes
    files: dict[str, bytes] = {}


class Commit(_Replication):
    """One commit: [[sql, [params, ...]], ...] packed (executemany rows), and new blob files."""

    kind: Literal["commit"] = "commit"
    statements: bytes
    files: dict[str, bytes] = {}


class Applied(_Replication):
    """The standby holds the snapshot or commit `seq` in its state dir (committed there)."""

    kind: Literal["applied"] = "applied"
    standby: str = ""  # its name, for the election key that says it is in sync


class Refused(_Replication):
    """The standby will not apply it: a newer epoch, or a commit with no snapshot before."""

    kind: Literal["refused"] = "refused"
    reason: str


Replication = Annotated[Snapshot | Commit | Applied | Refused, Field(discriminator="kind")]
REPLICATION_ADAPTER: TypeAdapter[Replication] = TypeAdapter(Replication)


def encode(msg: Replication) -> bytes:
    return bytes(msgpack.packb(msg.model_dump(mode="python"), use_bin_type=True))


def decode(frame: bytes) -> Replication:
    """A replication message; ValueError (pydantic's or msgpack's) when it is not one."""
    return REPLICATION_ADAPTER.validate_python(msgpack.unpackb(frame, raw=False))
