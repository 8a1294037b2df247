"""Running a pipeline's stages as jobs, and recomputing lost map outputs from their lineage.

Each stage runs as one job of stage tasks (one shard each); the master checkpoints every
finished task's result, which for a shuffling stage is only where its output lives (holder,
output id, sizes), never the rows. A reduce shard that cannot fetch a piece fails with
FetchFailed naming the holder: every output that holder held is written off, the shards that
made them run again (their own inputs recomputed first, if those were lost too), and only the
failed reduce shards run again. Outputs are deterministic, so the result is byte-identical.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shardmill.errors import ShardmillError
from shardmill.pipeline.fetch import drop_outputs
from shardmill.pipeline.plan import Stage
from shardmill.pipeline.tables import concat
from shardmill.wire.spec import STAGE_FUNCTION

if TYPE_CHECKING:
    from shardmill.client import Client

_HOLDER = re.compile(r"\[holder=(\S+)\]")
FETCH_FAILED = "shardmill.errors.FetchFailed"
MAX_RECOMPUTES = 20  # rounds of recompute for one stage before the pipeline gives up


class PipelineFailed(ShardmillError):
    """Raised by a pipeline's `result()` when a stage failed for good; names stage and shard."""


@dataclass
class StageProgress:
    """One stage as `PipelineJob.progress()` shows it."""

    index: int
    label: str
    shards: int
    done: int = 0
    jobs: list[str] = field(default_factory=list)
    bytes_shuffled: int = 0  # written to the workers' shuffle directories (spilled to disk)
    runs: int = 0  # files of sorted or partitioned rows written: more than one per shard when
    # a shard's output passed its worker's --shuffle-memory
    bytes_fetched: int = 0  # read from peers by this stage's shards
    rows: int = 0
    recomputed: list[int] = field(default_factory=list)  # shards run again for lost outputs


@dataclass
class Driver:
    client: Client
    stages: list[Stage]
    name: str = ""
    fetch_timeout: float = 10.0
    max_attempts: int = 3
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    outputs: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    splitters: dict[int, list[Any]] = field(default_factory=dict)
    story: list[str] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    current_job: str | None = None

    def __post_init__(self) -> None:
        self.progress = [StageProgress(s.index, s.label, s.shards) for s in self.stages]
        self._ran: dict[int, set[int]] = {s.index: set() for s in self.stages}
        self._digests: dict[tuple[int, int], str] = {}  # each output's bytes, as first made
        for s in self.stages:
            self.outputs[s.index] = {}

    def run(self) -> Any:
        last = self.stages[-1]
        try:
            self._ensure(last.index)
            return self._final(last)
        finally:
            self._drop()

    def _drop(self) -> None:
        """The workers' outputs of this pipeline are no longer needed: drop them now (a holder
        out of reach sweeps them once unused for its --shuffle-ttl)."""
        holders = {
            v["holder"]: v["key"]
            for outs in self.outputs.values()
            for v in outs.values()
            if "holder" in v
        }
        if holders:
            drop_outputs(holders, self.token)

    # ---- stages --------------------------------------------------------------------------------

    def _ensure(self, index: int) -> None:
        """Every shard of stage `index` has an output (its parents first)."""
        stage = self.stages[index]
        for _ in range(MAX_RECOMPUTES):
            if len(self.outputs[index]) == stage.shards:
                return
            for parent in stage.parents:
                self._ensure(parent)  # may throw away outputs of this stage: see _record
            missing = [s for s in range(stage.shards) if s not in self.outputs[index]]
            self._splitters(stage)
            again = [s for s in missing if s in self._ran[index]]
            self.progress[index].recomputed.extend(again)
            self._ran[index].update(missing)
            self._run(stage, missing)
        raise PipelineFailed(
            f"stage {index} ({stage.label}): outputs kept being lost after "
            f"{MAX_RECOMPUTES} recomputes; are workers being replaced?"
        )

    def _run(self, stage: Stage, shards: list[int]) -> None:
        if self.cancelled.is_set():
            raise PipelineFailed("the pipeline was cancelled")
        tasks = [(self._task(stage, s),) for s in shards]
        job = self.client.map(
            STAGE_FUNCTION,
            tasks,
            chunk_size=1,
            max_attempts=self.max_attempts,
            allow_failures=len(tasks),
            name=f"{self.name or 'pipeline'} stage {stage.index}",
        )
        self.current_job = job.id
        self.progress[stage.index].jobs.append(job.id)
        self.story.append(
            f"stage {stage.index} ({stage.label}): shards {_span(shards)} in job {job.id}"
        )
        results = job.result()
        self.current_job = None
        info = self.client.status(job.id, shards=True)
        lost: set[str] = set()
        for i, (shard, value) in enumerate(zip(shards, results, strict=True)):
            if value is not None:
                self._record(stage, shard, value)
                continue
            history = info.shards[i].history if info.shards else []
            err = history[-1].error if history else None
            if err is not None and err.type == FETCH_FAILED:
                lost.update(_HOLDER.findall(err.message))
                continue
            what = f"{err.type}: {err.message}" if err is not None else "failed"
            raise PipelineFailed(
                f"stage {stage.index} ({stage.label}) shard {shard} failed: "
                f"{what}\n{err.traceback if err is not None else ''}".rstrip()
            )
        for holder in sorted(lost):
            self._write_off(holder, stage)

    def _record(self, stage: Stage, shard: int, value: dict[str, Any]) -> None:
        digest = value.get("digest", "")
        if self._digests.setdefault((stage.index, shard), digest) != digest:
            self._digests[(stage.index, shard)] = digest  # the new bytes are the ones now
            self._mixed(stage, shard)
        self.outputs[stage.index][shard] = value
        p = self.progress[stage.index]
        p.done = len(self.outputs[stage.index])
        p.bytes_shuffled += int(value.get("bytes", 0))
        p.runs += int(value.get("runs", 0))
        p.bytes_fetched += int(value.get("fetched", 0))
        p.rows += int(value.get("rows", 0))

    def _mixed(self, stage: Stage, shard: int) -> None:
        """A recomputed output differs from the one it replaces: the stage's functions are not
        deterministic. Its consumers' outputs so far read the old bytes: they all run again,
        so no consumer ever mixes the two (Spark's SPARK-23207 lost rows that way)."""
        self.story.append(
            f"stage {stage.index} shard {shard} ran again and gave other bytes: its functions "
            "are not deterministic"
        )
        for consumer in self.stages:
            if stage.index in consumer.parents and self.outputs[consumer.index]:
                redo = sorted(self.outputs[consumer.index])
                self.outputs[consumer.index].clear()
                self.progress[consumer.index].done = 0
                self.story.append(
                    f"stage {consumer.index} shards {_span(redo)} read the old bytes: they run "
                    "again, so no shard mixes the two"
                )

    def _write_off(self, holder: str, by: Stage) -> None:
        """Everything `holder` held is gone: its outputs are recomputed when next needed."""
        for index, outs in self.outputs.items():
            gone = sorted(s for s, v in outs.items() if v.get("holder") == holder)
            for s in gone:
                del outs[s]
            if gone:
                self.progress[index].done = len(outs)
                self.story.append(
                    f"stage {by.index} could not fetch from {holder}: stage "
                    f"{index} shards {_span(gone)} held there run again"
                )

    # ---- tasks ---------------------------------------------------------------------------------

    def _task(self, stage: Stage, shard: int) -> dict[str, Any]:
        task: dict[str, Any] = {
            "token": self.token,
            "stage": stage.index,
            "shard": shard,
            "fetch_timeout": self.fetch_timeout,
            "ops": stage.ops,
            "output": stage.output,
        }
        if stage.inputs:
            task["input"] = stage.inputs[shard]
        else:
            parents = [self._pieces(p, stage, shard) for p in stage.parents]
            task["input"] = {"kind": "shuffle", "parents": parents, **stage.combine}
        return task

    def _pieces(self, parent: int, stage: Stage, shard: int) -> list[dict[str, Any]]:
        request: dict[str, Any]
        cuts = self.splitters.get(parent)
        if cuts is None:
            request = {"part": shard}
        else:
            rank = stage.shards - 1 - shard if stage.combine.get("descending") else shard
            request = {
                "lo": cuts[rank - 1] if rank else None,
                "hi": cuts[rank] if rank < len(cuts) else None,
            }
        outs = self.outputs[parent]
        return [
            {
                "holder": v["holder"],
                "key": v["key"],
                "out": v["out"],
                "request": {**request, "run": run},
            }
            for _, v in sorted(outs.items())
            for run in range(int(v.get("runs", 1)))
        ]

    def _splitters(self, stage: Stage) -> None:
        """A sort's split points, from every parent shard's sample (once: recomputed outputs
        give the same sample)."""
        if stage.combine.get("combine") != "sort" or stage.parents[0] in self.splitters:
            return
        parent = stage.parents[0]
        samples = [np.asarray(v["sample"]) for _, v in sorted(self.outputs[parent].items())]
        samples = [s for s in samples if len(s)]
        if not samples:
            self.splitters[parent] = []
            return
        keys = np.sort(np.concatenate(samples), kind="stable")
        n = stage.shards
        cuts = [keys[len(keys) * i // n].item() for i in range(1, n)]
        self.splitters[parent] = cuts

    def _final(self, last: Stage) -> Any:
        outs = [v for _, v in sorted(self.outputs[last.index].items())]
        if last.output["kind"] == "write":
            return {
                "files": [f for v in outs for f in v["files"]],
                "rows": sum(int(v["rows"]) for v in outs),
            }
        return concat([v["table"] for v in outs], "collect")


def _span(shards: list[int]) -> str:
    return ", ".join(map(str, shards)) if len(shards) <= 12 else f"{len(shards)} shards"
