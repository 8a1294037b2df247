"""What the state dir holds, as records: a stored job and its shards, and how values, inputs
and finished shards are packed into blobs (msgpack; array frames as bytes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgpack
import numpy as np

from shardmill.wire.codec import Buffer, to_bytes
from shardmill.wire.protocol import AttemptInfo, ErrorInfo
from shardmill.wire.spec import Descriptor, JobSpec


def pack_blob(payload: bytes, arrays: Sequence[Buffer | np.ndarray]) -> bytes:
    """A packed value and its array frames as one blob."""
    return bytes(msgpack.packb([payload, [to_bytes(a) for a in arrays]]))


def unpack_blob(blob: bytes) -> tuple[bytes, list[Buffer]]:
    payload, arrays = msgpack.unpackb(blob)
    return payload, list(arrays)


def pack_inputs(inputs: Sequence[tuple[bytes, Sequence[Buffer | np.ndarray]]]) -> bytes | None:
    """Every shard's input (packed value and array frames) as one blob; None when there are none.

    One blob per job rather than a row per shard: a 64-shard map job's inputs cost one row."""
    if not inputs:
        return None
    return bytes(msgpack.packb([[p, [to_bytes(a) for a in arrays]] for p, arrays in inputs]))


def unpack_inputs(blob: bytes | None) -> list[tuple[bytes, list[Buffer]]]:
    return [] if blob is None else [(p, list(arrays)) for p, arrays in msgpack.unpackb(blob)]


@dataclass
class StoredShard:
    state: str
    history: list[AttemptInfo]
    result: bytes | None


@dataclass
class StoredJob:
    job_id: str
    spec: JobSpec
    descriptors: list[Descriptor]
    part_counts: list[int]
    submitted_at: float
    state: str
    error: str | None
    finished_at: float | None
    result: bytes | None
    inputs: bytes | None = None  # pack_inputs()
    shards: dict[int, StoredShard] = field(default_factory=dict)
    partial: bytes | None = None
    started_at: float | None = None
    attempts_given: int = 0  # the highest attempt number given to its shards (while running)
    resent: int = 0  # copies of merged executions' results that came again (JobInfo.resent)


def unpack_settled(blob: bytes) -> dict[int, StoredShard]:
    """Store.job_ended's `settled`, read back."""
    return {
        index: StoredShard(
            state,
            [
                AttemptInfo(
                    attempt=attempt,
                    worker=worker,
                    started=started,
                    ended=ended,
                    outcome=outcome,
                    error=None if error is None else ErrorInfo.model_validate(error),
                    # state dirs from before these were kept: None, False
                    ran=more[0] if more else None,
                    backup=bool(more[1]) if len(more) > 1 else False,
                    output=more[2] if len(more) > 2 else "",
                )
                for attempt, worker, started, ended, outcome, error, *more in history
            ],
            None,
        )
        for index, state, history in msgpack.unpackb(blob)
    }
