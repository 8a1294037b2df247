"""Merging partial results as they arrive: ordered parts for map jobs, `combine` for ops."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from shardmill.errors import ProtocolError
from shardmill.ops import DatasetOp
from shardmill.wire.codec import Buffer, pack_value, unpack_value


@dataclass
class FinalResult:
    """What a client receives: packed parts in order and their array frames."""

    parts: list[bytes]
    part_arrays: list[int]
    arrays: list[Any]


@dataclass
class MapMerger:
    """Keeps each shard's packed results untouched; the client unpacks them in shard order."""

    counts: list[int]  # items per shard
    parts: dict[int, tuple[bytes, list[Buffer]]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # shards as they were merged (for streams)
    _starts: list[int] = field(default_factory=list)  # each shard's first item's index

    def first_item(self, shard: int) -> int:
        if not self._starts:
            self._starts = [0, *itertools.accumulate(self.counts)]
        return self._starts[shard]

    def add(
        self, shard: int, payload: bytes, arrays: list[Buffer], more: tuple[int, ...] = ()
    ) -> None:
        if more:
            raise ProtocolError(f"shard {shard}: a map job's results are never batched")
        if shard not in self.parts:
            self.order.append(shard)
        self.parts[shard] = (payload, arrays)

    def final(self, missing: tuple[int, ...] = ()) -> FinalResult:
        out = FinalResult([], [], [])
        for i, count in enumerate(self.counts):
            # A shard missing under allow_failures yields None for each of its items.
            part = self.parts.get(i)
            payload, arrays = part if part is not None else (pack_value([None] * count).data, [])
            out.parts.append(payload)
            out.part_arrays.append(len(arrays))
            out.arrays.extend(arrays)
        return out


@dataclass
class OpMerger:
    """Folds each shard's partial into one accumulator with the op's associative combine."""

    op: DatasetOp
    acc: dict[str, Any] | None = None
    shards_merged: list[int] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)  # dataset, strategy, op, version

    def add(
        self, shard: int, payload: bytes, arrays: list[Buffer], more: tuple[int, ...] = ()
    ) -> None:
        """Fold a partial in: one shard's, or a batch's (`shard` and `more`, folded already)."""
        part = unpack_value(payload, arrays)
        if not isinstance(part, dict):
            raise ProtocolError(f"shard {shard}: {self.op.name} partial is not a map")
        self.acc = part if self.acc is None else self.op.combine(self.acc, part)
        self.shards_merged.extend((shard, *more))

    def final(self, missing: tuple[int, ...] = ()) -> FinalResult:
        value = self.op.finalize(self.acc or {"count": 0})
        value["shards_merged"] = len(self.shards_merged)
        value["missing_shards"] = list(missing)
        if self.provenance:
            value["provenance"] = {**self.provenance, "shards": sorted(self.shards_merged)}
        packed = pack_value(value)
        return FinalResult([packed.data], [len(packed.arrays)], list(packed.arrays))


Merger = MapMerger | OpMerger
