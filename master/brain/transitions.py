"""The states shards and jobs move through, and the one table of moves each may make."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from shardmill.errors import InvalidTransition


class ShardState(StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"  # backing off before a retry
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"  # quarantined: attempts exhausted or not retryable
    CANCELLED = "cancelled"


class JobState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


_S = ShardState
# A late result may land on a shard that went back to the queue: first result wins.
SHARD_MOVES: dict[ShardState, frozenset[ShardState]] = {
    _S.QUEUED: frozenset({_S.LEASED, _S.DONE, _S.CANCELLED}),
    _S.WAITING: frozenset({_S.QUEUED, _S.DONE, _S.CANCELLED}),
    _S.LEASED: frozenset({_S.DONE, _S.QUEUED, _S.WAITING, _S.FAILED, _S.CANCELLED}),
    _S.DONE: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}
TERMINAL = frozenset({_S.DONE, _S.FAILED, _S.CANCELLED})

_J = JobState
# DONE -> FAILED: every shard merged, but the result could not be finalized.
JOB_MOVES: dict[JobState, frozenset[JobState]] = {
    _J.RUNNING: frozenset({_J.DONE, _J.FAILED, _J.CANCELLED}),
    _J.DONE: frozenset({_J.FAILED}),
    _J.FAILED: frozenset(),
    _J.CANCELLED: frozenset(),
}

Story = collections.deque[str]
State = TypeVar("State", ShardState, JobState)


def new_story() -> Story:
    """The last few moves of a shard or a job, told in an InvalidTransition."""
    return collections.deque(maxlen=8)


def move(
    what: str,
    old: State,
    new: State,
    why: str,
    *,
    moves: Mapping[State, frozenset[State]],
    story: Story,
) -> State:
    """Check `old -> new` against the table, record it with its cause, and return `new`; a
    forbidden move raises InvalidTransition naming `what` and its recent story."""
    if new not in moves[old]:
        raise InvalidTransition(
            f"{what}: {old} -> {new} ({why}) is not allowed; recent story: {list(story)}"
        )
    story.append(f"{old}->{new}: {why}")
    return new
