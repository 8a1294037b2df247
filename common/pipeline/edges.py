"""Edges between stages: a byte budget on what waits between a stage and the next, kept by
pausing the producer and letting the consumer absorb what waits (backpressure).

A shuffling stage's outputs wait on its workers' disks for the stage after it. While the
producer runs, the bytes it wrote and its consumer has not absorbed (plus an estimate for its
shards still running: the largest output it made so far) stay within the edge's budget: the
producer's next shards start only when they fit. When half the budget waits, or the producer
cannot go on, the consumer *absorbs* a wave: a contiguous range of the producer's outputs, one
task per consumer partition, each writing its partition of the wave to its own worker's disk as
one run (a group-by folds its partials, a sort merges them in key order, a join or a
repartition keeps the rows in map-shard order; a repartition followed only by `map`/`filter`
runs those on the wave there, so a slow consumer paces the producer). A wave absorbed by every
partition lets its producer outputs go. The consumer's last run reads the absorbed runs, in
wave order, then the outputs no wave took: the same rows in the same order as a run without
waves. A lost absorbed run sends its wave's producer shards back (lineage) and is absorbed
again. Nothing here does I/O; `PipelineState` (shardmill.pipeline.driver) mixes it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shardmill.config import DEFAULT_EDGE_BUDGET
from shardmill.pipeline.plan import Stage

__all__ = ["DEFAULT_EDGE_BUDGET", "EdgePlan", "Run", "pieces_of"]
STREAMING_OPS = ("map", "filter")  # narrow steps a consumer may run on a wave as it comes


@dataclass(frozen=True)
class Run:
    """Shards of one stage to run as one job: the next thing the pipeline needs. With
    `absorb`, the consumer partitions absorbing wave `wave` of stage `absorb`'s outputs."""

    stage: int
    shards: list[int]
    tasks: list[dict[str, Any]]
    name: str
    absorb: int | None = None
    wave: int = -1


class EdgePlan:
    """The edge budget's side of the pipeline's decisions (see the module's doc)."""

    stages: list[Stage]
    outputs: dict[int, dict[int, dict[str, Any]]]
    splitters: dict[int, list[Any]]
    story: list[str]
    name: str
    edge_budget: int
    waves: dict[int, list[dict[str, Any]]]  # producer -> its waves, in order
    peaks: dict[int, int]  # producer -> the most bytes its edge held (as accounted)
    dropping: list[tuple[str, str, str]]  # (holder, key, output id) to let go now
    token: str
    fetch_timeout: float
    width: int = 1  # the cluster's slots, as the driver last heard

    # ---- provided by PipelineState -------------------------------------------------------------

    def _complete(self, index: int) -> bool:
        raise NotImplementedError

    def _request(self, parent: int, stage: Stage, shard: int) -> dict[str, Any]:
        raise NotImplementedError

    def _compute_splitters(self, stage: Stage, shards: range) -> None:
        raise NotImplementedError

    # ---- the edge ------------------------------------------------------------------------------

    def consumer(self, index: int) -> Stage | None:
        return next((s for s in self.stages if index in s.parents), None)

    def streams(self, consumer: Stage) -> bool:
        """Whether the consumer runs its steps on each wave as it comes (a repartition then
        only per-batch steps): then every wave is absorbed, the last run only gathers."""
        return (
            consumer.combine.get("combine") == "concat"
            and len(consumer.parents) == 1
            and all(op["op"] in STREAMING_OPS for op in consumer.ops)
        )

    def waiting_bytes(self, producer: int, running: list[Run]) -> int:
        """Bytes on the edge: outputs not yet let go, and the estimate for shards running."""
        outs = self.outputs[producer]
        held = sum(int(v.get("bytes", 0)) for v in outs.values() if not v.get("dropped"))
        going = sum(1 for s in running_shards(producer, running) if s not in outs)
        return held + going * (self._estimate(producer) or 0)

    def paused(self, index: int, running: list[Run]) -> bool:
        """Whether the stage has shards to run that its edge has no room for now."""
        stage = self.stages[index]
        if self.consumer(index) is None or self.edge_budget <= 0 or self._complete(index):
            return False
        missing = self._missing(stage, running)
        return bool(missing) and not self._gated(stage, missing, running)

    def _missing(self, stage: Stage, running: list[Run]) -> list[int]:
        """The stage's shards with no output that no run is making."""
        busy = running_shards(stage.index, running)
        outs = self.outputs[stage.index]
        return [s for s in range(stage.shards) if s not in outs and s not in busy]

    def _task_head(
        self, stage: Stage, shard: int, ops: list[dict[str, Any]], output: dict[str, Any]
    ) -> dict[str, Any]:
        """What every task of the pipeline carries, its input aside."""
        return {
            "token": self.token,
            "stage": stage.index,
            "shard": shard,
            "fetch_timeout": self.fetch_timeout,
            "ops": ops,
            "output": output,
        }

    def _estimate(self, producer: int) -> int | None:
        sizes = [int(v.get("bytes", 0)) for v in self.outputs[producer].values()]
        return max(sizes) if sizes else None

    def _gated(self, stage: Stage, missing: list[int], running: list[Run]) -> list[int]:
        """Which of a producer's missing shards may start now within its edge's budget."""
        if self.consumer(stage.index) is None or self.edge_budget <= 0:
            return [] if running_shards(stage.index, running) else missing
        busy = running_shards(stage.index, running)
        est = self._estimate(stage.index)
        if est is None:  # no size known yet: one shard a slot, then sizes tell
            return [] if busy else missing[: max(1, self.width)]
        held = self.waiting_bytes(stage.index, running)
        # Half the budget a run at most: a run's end leaves room for the next beside a wave
        # being absorbed, so the producer and its consumer overlap.
        fit = min(self.edge_budget - held, self.edge_budget // 2) // max(1, est)
        if fit <= 0 and held == 0:
            fit = 1  # one output larger than the whole budget: it still has to run
        return missing[: max(0, fit)]

    def _dissolve(self, producer: int, consumer: Stage) -> None:
        """Waves waiting for outputs lost with a worker, while what they hold fills the edge:
        they are given up (their absorbed runs let go), so the outputs they took form waves
        of their own and the lost ones run again within the budget."""
        keep = []
        for wave in self.waves[producer]:
            if len(wave["parts"]) == consumer.shards or self._back(producer, wave):
                keep.append(wave)
                continue
            for v in wave["parts"].values():
                self.dropping.append((v["holder"], v["key"], v["out"]))
            self.story.append(
                f"stage {consumer.index} gives up its wave of stage {producer}'s shards "
                f"{wave['lo']}-{wave['hi'] - 1}: some were lost, and what it holds fills the "
                "edge; they are absorbed anew"
            )
        self.waves[producer][:] = keep  # (no absorb of this edge runs: no index moves)

    def _back(self, producer: int, wave: dict[str, Any]) -> bool:
        outs = self.outputs[producer]
        return all(s in outs and not outs[s].get("dropped") for s in range(wave["lo"], wave["hi"]))

    def _free(self, producer: int) -> list[tuple[int, int]]:
        """Contiguous ranges [lo, hi) of outputs waiting that no wave took yet."""
        taken = {s for w in self.waves.get(producer, []) for s in range(w["lo"], w["hi"])}
        outs = self.outputs[producer]
        free = sorted(s for s, v in outs.items() if not v.get("dropped") and s not in taken)
        spans: list[tuple[int, int]] = []
        for s in free:
            if spans and spans[-1][1] == s:
                spans[-1] = (spans[-1][0], s + 1)
            else:
                spans.append((s, s + 1))
        return spans

    def _stuck(self, producer: int, running: list[Run]) -> bool:
        """The producer has shards to run, none running, and no room for one."""
        stage = self.stages[producer]
        if self._complete(producer) or running_shards(producer, running):
            return False
        missing = [s for s in range(stage.shards) if s not in self.outputs[producer]]
        return not self._gated(stage, missing, running)

    def _absorb_run(self, producer: int, running: list[Run]) -> Run | None:
        consumer = self.consumer(producer)
        if consumer is None or self.edge_budget <= 0:
            return None
        if any(r.absorb == producer for r in running):
            return None
        waves = self.waves.setdefault(producer, [])
        for i, wave in enumerate(waves):  # waves that lost absorbed runs first
            if len(wave["parts"]) < consumer.shards and (again := self._again(producer, i)):
                return again
        span = self._next_wave(producer, consumer, running)
        if span is None:
            return None
        waves.append({"lo": span[0], "hi": span[1], "parts": {}})
        return self._wave_run(producer, consumer, len(waves) - 1, list(range(consumer.shards)))

    def _next_wave(
        self, producer: int, consumer: Stage, running: list[Run]
    ) -> tuple[int, int] | None:
        """The outputs to absorb now, [lo, hi): half the budget waiting in a row, or what
        waits when the producer is stuck, or (a streaming consumer) the rest at the end."""
        spans = self._free(producer)
        if not spans and self._stuck(producer, running):
            self._dissolve(producer, consumer)  # their outputs waiting may form waves now
            spans = self._free(producer)
        if not spans:
            return None
        outs = self.outputs[producer]
        size = {g: sum(int(outs[s].get("bytes", 0)) for s in range(*g)) for g in spans}
        if self._complete(producer):
            # a streaming consumer takes the rest in waves; any other reads it as it is
            return spans[0] if self.streams(consumer) else None
        if big := [g for g in spans if size[g] >= self.edge_budget // 2]:
            return self._half(producer, big[0])
        if self._stuck(producer, running):
            return self._half(producer, max(spans, key=lambda g: size[g]))
        return None

    def _half(self, producer: int, span: tuple[int, int]) -> tuple[int, int]:
        """The first outputs of `span` that make half the budget (one at least): the rest
        keeps waiting, so the producer has room while the wave is absorbed (they overlap)."""
        lo, hi = span
        outs, end, total = self.outputs[producer], lo, 0
        while end < hi and (end == lo or total < self.edge_budget // 2):
            total += int(outs[end].get("bytes", 0))
            end += 1
        return lo, end

    def _again(self, producer: int, i: int) -> Run | None:
        """A wave that lost absorbed runs, absorbed again once its outputs are back (while
        they run, later outputs may form waves of their own: the edge must empty to fit)."""
        consumer = self.consumer(producer)
        assert consumer is not None
        wave = self.waves[producer][i]
        if not self._back(producer, wave):
            return None  # its outputs run again first
        left = [p for p in range(consumer.shards) if p not in wave["parts"]]
        return self._wave_run(producer, consumer, i, left)

    def _wave_run(self, producer: int, consumer: Stage, i: int, parts: list[int]) -> Run:
        wave = self.waves[producer][i]
        span = range(wave["lo"], wave["hi"])
        if consumer.combine.get("combine") == "sort" and producer not in self.splitters:
            self._compute_splitters(consumer, span)
        tasks = [self._absorb_task(producer, consumer, span, p, i) for p in parts]
        name = f"{self.name or 'pipeline'} stage {consumer.index} wave {i}"
        return Run(consumer.index, parts, tasks, name, absorb=producer, wave=i)

    def _absorb_task(
        self, producer: int, consumer: Stage, span: range, part: int, i: int
    ) -> dict[str, Any]:
        how = consumer.combine.get("combine")
        combine: dict[str, Any] = {"combine": "concat"}
        if how == "agg":
            combine = {**consumer.combine, "partial": True}
        elif how == "sort":
            combine = {**consumer.combine, "descending": False}
        request = self._request(producer, consumer, part)
        pieces = [piece for s in span for piece in pieces_of(self.outputs[producer][s], request)]
        ops = consumer.ops if self.streams(consumer) else []
        task = self._task_head(consumer, part, ops, {"kind": "run"})
        task.update(absorb=i, input={"kind": "shuffle", "parents": [pieces], **combine})
        return task

    def _absorbed(self, run: Run, shard: int, value: dict[str, Any]) -> None:
        """An absorbing partition's run is written; a wave absorbed whole lets go of its
        producer outputs."""
        assert run.absorb is not None
        wave = self.waves[run.absorb][run.wave]
        wave["parts"][shard] = value
        consumer = self.stages[run.stage]
        if len(wave["parts"]) < consumer.shards:
            return
        for s in range(wave["lo"], wave["hi"]):
            v = self.outputs[run.absorb][s]
            if not v.get("dropped"):
                self.dropping.append((v.pop("holder"), v["key"], v["out"]))
                v["dropped"] = True

    def _settled(self, producer: int) -> bool:
        """Whether the consumer's last run may read this edge: every wave absorbed whole and,
        when the consumer streams, every output in a wave."""
        consumer = self.consumer(producer)
        assert consumer is not None
        waves = self.waves.get(producer, [])
        if any(len(w["parts"]) < consumer.shards for w in waves):
            return False
        if self.streams(consumer) and self.edge_budget > 0:
            covered: int = sum(w["hi"] - w["lo"] for w in waves)
            return covered == self.stages[producer].shards
        return True

    def ordered_pieces(self, producer: int, stage: Stage, shard: int) -> list[dict[str, Any]]:
        """Partition `shard`'s pieces of the producer's output: each wave's absorbed run and
        each output no wave took, in map-shard order (so the rows come as without waves)."""
        request = self._request(producer, stage, shard)
        at = [
            (w["lo"], pieces_of(w["parts"][shard], {"part": 0}))
            for w in self.waves.get(producer, [])
        ]
        outs = self.outputs[producer].items()
        at += [(s, pieces_of(v, request)) for s, v in outs if not v.get("dropped")]
        return [piece for _, pieces in sorted(at, key=lambda a: a[0]) for piece in pieces]

    def _lose_waves(self, holder: str) -> list[tuple[int, list[int]]]:
        """Absorbed runs `holder` held are gone: their waves' producer shards run again (their
        outputs were let go) and the lost partitions are absorbed again. Returns, per
        producer, the shards sent back."""
        back: list[tuple[int, list[int]]] = []
        for producer, waves in self.waves.items():
            redo: list[int] = []
            for wave in waves:
                lost = [p for p, v in wave["parts"].items() if v.get("holder") == holder]
                for p in lost:
                    del wave["parts"][p]
                if lost:
                    redo.extend(self._send_back(producer, range(wave["lo"], wave["hi"])))
            if redo:
                back.append((producer, redo))
        return back

    def _send_back(self, producer: int, span: range) -> list[int]:
        outs = self.outputs[producer]
        gone = [s for s in span if outs.get(s, {}).get("dropped")]
        for s in gone:
            del outs[s]
        return gone

    def _forget_waves(self, producer: int) -> None:
        """The producer's bytes changed (not deterministic): every wave read the old ones."""
        self.waves[producer] = []
        self._send_back(producer, range(self.stages[producer].shards))


def pieces_of(out: dict[str, Any], request: dict[str, Any]) -> list[dict[str, Any]]:
    """What a task asks of one output: `request` of each of its runs."""
    return [
        {
            "holder": out["holder"],
            "key": out["key"],
            "out": out["out"],
            "request": {**request, "run": r},
        }
        for r in range(int(out.get("runs", 1)))
    ]


def running_shards(stage: int, running: list[Run]) -> set[int]:
    return {s for r in running if r.stage == stage and r.absorb is None for s in r.shards}
