"""What Python's own doors need of the master: a map job's results streamed as they finish,
and pickled calls admitted only from the keys its operator put in KEYS/pickle/."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shardmill.errors import JobSpecError
from shardmill.master.brain.transitions import ShardState
from shardmill.master.core import Core
from shardmill.master.merge import MapMerger
from shardmill.ops.calls import PICKLE_SWITCH, PICKLED
from shardmill.wire.codec import pack_value
from shardmill.wire.keyring import Keyring
from shardmill.wire.protocol import JobResult, Message, ResultQuery, Submit

MAX_PARTS = 4096  # per answer: a long backlog comes in several


@dataclass
class _Waiting:
    identity: bytes
    req: int
    after: int
    until: float  # answered by then even with nothing new, so the client knows we are here


class ResultStreams:
    """Stream queries held until a result they have not seen is merged, their job ends, or
    their hold runs out. Answers tell of merges the group commit may not have written yet:
    a master restarted after a crash has another `run`, and the client counts from 0 again,
    skipping what it has (a shard re-run after the crash returns the same items)."""

    def __init__(self, core: Core, reply: Callable[[bytes, Message, Sequence[Any]], None]) -> None:
        self.core = core
        self.reply = reply
        self.run = uuid.uuid4().hex[:12]
        self.waiting: dict[str, list[_Waiting]] = {}

    def query(self, identity: bytes, msg: ResultQuery) -> None:
        """Answer now if there is news (or the query may not wait), else hold it."""
        if not isinstance(self.core.data[msg.job_id].merger, MapMerger):
            raise JobSpecError(
                f"job {msg.job_id} is not a map job: only a map job's results stream as they "
                "finish; wait for its result instead"
            )
        now = time.monotonic()
        assert msg.after is not None
        waiting = _Waiting(identity, msg.req, msg.after, now + msg.hold)
        if not self._answer(msg.job_id, waiting, now=now):
            self.waiting.setdefault(msg.job_id, []).append(waiting)

    def flush(self, now: float) -> None:
        """Once a loop turn: answer held queries that have news or waited long enough."""
        for job_id in list(self.waiting):
            if job_id not in self.core.data:  # pruned: the client's next query says so
                del self.waiting[job_id]
                continue
            left = [w for w in self.waiting[job_id] if not self._answer(job_id, w, now=now)]
            if left:
                self.waiting[job_id] = left
            else:
                del self.waiting[job_id]

    def _answer(self, job_id: str, w: _Waiting, *, now: float) -> bool:
        merger = self.core.data[job_id].merger
        assert isinstance(merger, MapMerger)
        job = self.core.brain.jobs[job_id]
        done = list(merger.order)
        if job.finished:  # under allow_failures, the shards that failed come as Nones
            done += [s.index for s in job.shards if s.state is ShardState.FAILED]
        if len(done) <= w.after and not job.finished and now < w.until:
            return False
        shards = done[w.after : w.after + MAX_PARTS]
        parts, counts, first, arrays = [], [], [], []
        for shard in shards:
            payload, frames = merger.parts.get(shard) or (
                pack_value([None] * merger.counts[shard]).data,
                [],
            )
            parts.append(payload)
            counts.append(len(frames))
            first.append(merger.first_item(shard))
            arrays.extend(frames)
        msg = JobResult(
            req=w.req,
            job=self.core.brain.job_info(job_id),
            parts=parts,
            part_arrays=counts,
            first_items=first,
            next=w.after + len(shards),
            run=self.run,
        )
        self.reply(w.identity, msg, arrays)
        return True


def pickle_refusal(keyring: Keyring | None, owner: str, msg: Submit) -> str | None:
    """Why this client may not send pickled calls, as one line; None when it may. Without
    CURVE (--insecure) every client may do everything, this too; the workers still decide."""
    if msg.spec.function != PICKLED or keyring is None or keyring.may_pickle(owner):
        return None
    name = keyring.owner_name(owner)
    return f"client {name!r}: {PICKLE_SWITCH.replace('KEYS/pickle/', f'KEYS/pickle/{name}.key')}"
