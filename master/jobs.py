"""Accepting a job: validate the spec, split it into shard descriptors, build each task."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from shardmill.data.plan import build_plan, values_sent
from shardmill.errors import JobSpecError
from shardmill.master.merge import FinalResult, MapMerger, Merger, OpMerger
from shardmill.ops import MAP_OP
from shardmill.ops.registry import Registry
from shardmill.wire.codec import Buffer
from shardmill.wire.protocol import PROTOCOL_VERSION, ShmRef, Submit
from shardmill.wire.spec import Descriptor, MapChunk


@dataclass
class JobData:
    """What the loop keeps per job beside the state machine: descriptors, inputs, results."""

    descriptors: list[Descriptor]
    merger: Merger
    inputs: list[tuple[bytes, list[Buffer]]] = field(default_factory=list)
    result: FinalResult | None = None
    waiters: list[tuple[bytes, int]] = field(default_factory=list)
    watchers: list[bytes] = field(default_factory=list)  # clients sent its tasks' output live
    segments: list[str] = field(default_factory=list)  # /dev/shm files holding `inputs`
    idempotent: bool = True  # its op may run a shard twice at once (a speculative backup)
    _dumps: dict[Descriptor, dict[str, Any]] = field(default_factory=dict)  # as they travel

    def task(
        self,
        job_id: str,
        shard: int,
        attempt: int,
        *,
        op: str,
        timeout: float | None,
        more: tuple[tuple[int, int], ...] = (),
    ) -> tuple[dict[str, Any], list[Buffer]]:
        """A shard's `Task` message as its header (for `codec.encode_header`) and array frames.
        Built as plain data: the master sends one per shard, and the pydantic model would cost
        a third of the encoding. The worker validates it as a `Task` (a test holds the two
        equal)."""
        payload, arrays = self.inputs[shard] if self.inputs else (b"", [])
        batch = [{"shard": s, "attempt": a, "descriptor": self._dump(s)} for s, a in more]
        header = {
            "v": PROTOCOL_VERSION,
            "epoch": 0,  # stamped when sent (WorkerMessages.send_header)
            "kind": "task",
            "job_id": job_id,
            "shard": shard,
            "attempt": attempt,
            "op": op,
            "descriptor": self._dump(shard),
            "timeout": None if timeout is None else timeout * (1 + len(more)),  # per shard
            "payload": payload,
            "shm": [],
            "more": batch,
            "echo": bool(self.watchers),  # a client watches: the worker sends what it prints
        }
        return header, arrays

    @staticmethod
    def with_refs(header: dict[str, Any], refs: list[ShmRef]) -> dict[str, Any]:
        """The task's header naming the array frames the worker maps from shared memory."""
        return {**header, "shm": [r.model_dump() for r in refs]}

    def _dump(self, shard: int) -> dict[str, Any]:
        """A shard's descriptor as plain data; the few distinct ones of a map job, once each."""
        desc = self.descriptors[shard]
        try:
            dumped = self._dumps.get(desc)
        except TypeError:  # a list inside (a dataset's pieces): not hashable, never repeated
            return desc.model_dump(mode="python")
        if dumped is None:
            dumped = desc.model_dump(mode="python")
            if len(self._dumps) < 64:
                self._dumps[desc] = dumped
        return dumped

    @property
    def batchable(self) -> bool:
        """Shards read by reference whose partials fold: they may travel in batches."""
        return isinstance(self.merger, OpMerger) and not self.inputs

    def release_inputs(self) -> None:
        self.inputs = []


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def accept(msg: Submit, arrays: list[Buffer], registry: Registry) -> JobData:
    """Turn a Submit into JobData, or raise JobSpecError naming the field and the fix; user
    ops resolve among `registry`'s modules."""
    spec = msg.spec
    if spec.op == MAP_OP:
        return _accept_map(msg, arrays)
    # Datasets, strategies and ops are planned in shardmill.data.plan (headers and samples only).
    plan = build_plan(spec, values_sent(msg, arrays), registry=registry)
    merger = OpMerger(plan.op, provenance=plan.provenance)
    idempotent = bool(getattr(plan.op, "idempotent", True))
    return JobData(
        descriptors=plan.descriptors, merger=merger, inputs=plan.inputs, idempotent=idempotent
    )


def _accept_map(msg: Submit, arrays: list[Buffer]) -> JobData:
    spec = msg.spec
    if spec.function is None:
        raise JobSpecError('function: a map job needs a function such as "pkg.mod:func"')
    n = len(msg.parts)
    if n == 0:
        raise JobSpecError("args: a map job needs at least one argument tuple")
    if len(msg.part_counts) != n or len(msg.part_arrays) != n:
        raise JobSpecError("parts: part_counts and part_arrays must have one entry per part")
    if sum(msg.part_arrays) != len(arrays) or any(c < 1 for c in msg.part_counts):
        raise JobSpecError(
            f"parts: the parts reference {sum(msg.part_arrays)} array frames, got {len(arrays)}"
        )
    inputs: list[tuple[bytes, list[Any]]] = []
    offset = 0
    for payload, k in zip(msg.parts, msg.part_arrays, strict=True):
        inputs.append((payload, arrays[offset : offset + k]))
        offset += k
    chunks = {c: MapChunk(function=spec.function, count=c) for c in set(msg.part_counts)}
    descriptors: list[Descriptor] = [chunks[c] for c in msg.part_counts]  # frozen: shared
    return JobData(descriptors=descriptors, merger=MapMerger(list(msg.part_counts)), inputs=inputs)
