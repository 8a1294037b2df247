"""Running a pipeline's stages as jobs, and recomputing lost map outputs from their lineage.

Each stage runs as one job of stage tasks (one shard each); the master checkpoints every
finished task's result, which for a shuffling stage is only where its output lives (holder,
output id, sizes), never the rows. A reduce shard that cannot fetch a piece fails with
FetchFailed naming the holder: every output that holder held is written off, the shards that
made them run again (their own inputs recomputed first, if those were lost too), and only the
failed reduce shards run again. Outputs are deterministic, so the result is byte-identical.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardmill.errors import PipelineFailed
from shardmill.pipeline.edges import DEFAULT_EDGE_BUDGET, EdgePlan, Run
from shardmill.pipeline.plan import Stage
from shardmill.pipeline.tables import concat
from shardmill.wire.protocol import ErrorInfo

_HOLDER = re.compile(r"\[holder=(\S+)\]")
FETCH_FAILED = "shardmill.errors.FetchFailed"
MAX_RECOMPUTES = 20  # rounds of recompute for one stage before the pipeline gives up


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


__all__ = ["PipelineState", "Run", "StageProgress"]


@dataclass
class PipelineState(EdgePlan):
    """The pipeline's decisions, without I/O: which stage shards run next (`next_runs`), what
    their ending means (`ended`: outputs recorded, lost holders written off), the result.
    The master runs each `Run` as a job; several may run at once (a producer's shards beside
    its consumer absorbing a wave: shardmill.pipeline.edges)."""

    stages: list[Stage]
    name: str = ""
    fetch_timeout: float = 10.0
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    outputs: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    splitters: dict[int, list[Any]] = field(default_factory=dict)
    story: list[str] = field(default_factory=list)
    edge_budget: int = DEFAULT_EDGE_BUDGET
    waves: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    peaks: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dropping: list[tuple[str, str, str]] = []
        self.progress = [StageProgress(s.index, s.label, s.shards) for s in self.stages]
        self._ran: dict[int, set[int]] = {s.index: set() for s in self.stages}
        self._rounds: dict[int, int] = {s.index: 0 for s in self.stages}
        self._digests: dict[tuple[int, int], str] = {}  # each output's bytes, as first made
        for s in self.stages:
            self.outputs.setdefault(s.index, {})

    def next_runs(self, running: list[Run], width: int = 1) -> list[Run]:
        """The stage shards that may start now, beside `running` (parents first; a producer
        within its edge's budget, a wave absorbed when the edge fills): none when the last
        stage is done or everything waits on what runs. `width`: the cluster's slots."""
        self.width = max(1, width)
        runs = self._plan(len(self.stages) - 1, running)
        every = running + runs
        for stage in self.stages[:-1]:
            held = self.waiting_bytes(stage.index, every)
            self.peaks[stage.index] = max(self.peaks.get(stage.index, 0), held)
        return runs

    def done(self) -> bool:
        return self._complete(len(self.stages) - 1)

    def _complete(self, index: int) -> bool:
        return len(self.outputs[index]) == self.stages[index].shards

    def _plan(self, index: int, running: list[Run]) -> list[Run]:
        stage = self.stages[index]
        if self._complete(index):
            return []
        runs: list[Run] = []
        ready = True
        for parent in stage.parents:
            runs += self._plan(parent, running)
            absorb = self._absorb_run(parent, running + runs)
            if absorb is not None:
                runs.append(absorb)
            ready = ready and self._complete(parent) and self._settled(parent)
            ready = ready and not any(r.absorb == parent for r in running + runs)
        return runs + self._own(stage, running) if ready else runs

    def _own(self, stage: Stage, running: list[Run]) -> list[Run]:
        missing = self._missing(stage, running)
        take = self._gated(stage, missing, running) if missing else []
        if not take:
            return []
        again = [s for s in take if s in self._ran[stage.index]]
        if again:
            self._rounds[stage.index] += 1
            if self._rounds[stage.index] > MAX_RECOMPUTES:
                raise PipelineFailed(
                    f"stage {stage.index} ({stage.label}): outputs kept being lost after "
                    f"{MAX_RECOMPUTES} recomputes; are workers being replaced?"
                )
            self.progress[stage.index].recomputed.extend(again)
        self._ran[stage.index].update(take)
        if stage.combine.get("combine") == "sort":
            self._compute_splitters(stage, range(self.stages[stage.parents[0]].shards))
        tasks = [self._task(stage, s) for s in take]
        return [Run(stage.index, take, tasks, f"{self.name or 'pipeline'} stage {stage.index}")]

    def started(self, run: Run, job_id: str) -> None:
        stage = self.stages[run.stage]
        self.progress[run.stage].jobs.append(job_id)
        if run.absorb is not None:
            wave = self.waves[run.absorb][run.wave]
            self.story.append(
                f"stage {run.stage} ({stage.label}): partitions {_span(run.shards)} absorb "
                f"stage {run.absorb}'s shards {wave['lo']}-{wave['hi'] - 1} (wave {run.wave}) "
                f"in job {job_id}, so stage {run.absorb} may go on"
            )
            return
        self.story.append(
            f"stage {run.stage} ({stage.label}): shards {_span(run.shards)} in job {job_id}"
        )

    def ended(self, run: Run, values: list[Any], errors: list[ErrorInfo | None]) -> None:
        """The run's job ended: a value per shard (None where it failed) and the last error of
        each failed one. A fetch failure writes off its holder; any other failure is final."""
        stage = self.stages[run.stage]
        lost: set[str] = set()
        for shard, value, err in zip(run.shards, values, errors, strict=True):
            if value is not None and run.absorb is not None:
                self._absorbed(run, shard, value)
            elif value is not None:
                self._record(stage, shard, value)
            elif err is not None and err.type == FETCH_FAILED:
                lost.update(_HOLDER.findall(err.message))
            else:
                what = f"{err.type}: {err.message}" if err is not None else "failed"
                raise PipelineFailed(
                    f"stage {stage.index} ({stage.label}) shard {shard} failed: {what}\n"
                    f"{err.traceback if err is not None else ''}".rstrip()
                )
        for holder in sorted(lost):
            self._write_off(holder, stage)

    def record(self) -> dict[str, Any]:
        """Everything it knows, as plain data (msgpack with array frames: `pack_value`), to
        be written to the state dir and read back by `from_record` after a restart."""
        return {
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "name": self.name,
            "fetch_timeout": self.fetch_timeout,
            "token": self.token,
            "outputs": [[i, sorted(o.items())] for i, o in self.outputs.items()],
            "splitters": sorted(self.splitters.items()),
            "story": self.story,
            "progress": [dataclasses.asdict(p) for p in self.progress],
            "ran": [[i, sorted(r)] for i, r in self._ran.items()],
            "rounds": sorted(self._rounds.items()),
            "digests": [[i, s, d] for (i, s), d in self._digests.items()],
            "edge_budget": self.edge_budget,
            "waves": [
                [i, [[w["lo"], w["hi"], sorted(w["parts"].items())] for w in ws]]
                for i, ws in self.waves.items()
            ],
            "peaks": sorted(self.peaks.items()),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> PipelineState:
        state = cls(
            [Stage(**s) for s in rec["stages"]],
            name=rec["name"],
            fetch_timeout=rec["fetch_timeout"],
            token=rec["token"],
            outputs={i: dict(o) for i, o in rec["outputs"]},
            splitters=dict(rec["splitters"]),
            story=list(rec["story"]),
            edge_budget=int(rec.get("edge_budget", 0)),
            waves={
                i: [{"lo": lo, "hi": hi, "parts": dict(parts)} for lo, hi, parts in ws]
                for i, ws in rec.get("waves", [])
            },
            peaks=dict(rec.get("peaks", [])),
        )
        state.progress = [StageProgress(**p) for p in rec["progress"]]
        state._ran = {i: set(r) for i, r in rec["ran"]}
        state._rounds = dict(rec["rounds"])
        state._digests = {(i, s): d for i, s, d in rec["digests"]}
        return state

    def holders(self) -> dict[str, str]:
        """Every worker holding an output of this pipeline: address -> public key."""
        absorbed = [w["parts"] for ws in self.waves.values() for w in ws]
        return {
            v["holder"]: v["key"]
            for outs in [*self.outputs.values(), *absorbed]
            for v in outs.values()
            if "holder" in v
        }

    def result(self) -> Any:
        last = self.stages[-1]
        outs = [v for _, v in sorted(self.outputs[last.index].items())]
        if last.output["kind"] == "write":
            return {
                "files": [f for v in outs for f in v["files"]],
                "rows": sum(int(v["rows"]) for v in outs),
            }
        return concat([v["table"] for v in outs], "collect")

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
        if self.waves.get(stage.index):
            self._forget_waves(stage.index)
            self.progress[stage.index].done = len(self.outputs[stage.index])
            self.story.append(
                f"every wave of stage {stage.index} absorbed so far read the old bytes: they "
                "are absorbed again, from outputs made again"
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
        for producer, back in self._lose_waves(holder):
            self.progress[producer].done = len(self.outputs[producer])
            self.story.append(
                f"stage {by.index} could not fetch from {holder}: the waves of stage "
                f"{producer} it had absorbed are absorbed again, from its shards {_span(back)}"
            )

    # ---- tasks ---------------------------------------------------------------------------------

    def _task(self, stage: Stage, shard: int) -> dict[str, Any]:
        task = self._task_head(stage, shard, stage.ops, stage.output)
        if stage.inputs:
            task["input"] = stage.inputs[shard]
        else:
            parents = [self.ordered_pieces(p, stage, shard) for p in stage.parents]
            task["input"] = {"kind": "shuffle", "parents": parents, **stage.combine}
            if self.edge_budget > 0 and self.streams(stage):
                task["ops"] = []  # every wave ran them as it was absorbed
        return task

    def _request(self, parent: int, stage: Stage, shard: int) -> dict[str, Any]:
        """What partition `shard` of `stage` asks of each output of `parent`."""
        cuts = self.splitters.get(parent)
        if cuts is None:
            return {"part": shard}
        rank = stage.shards - 1 - shard if stage.combine.get("descending") else shard
        return {
            "lo": cuts[rank - 1] if rank else None,
            "hi": cuts[rank] if rank < len(cuts) else None,
        }

    def _compute_splitters(self, stage: Stage, shards: range) -> None:
        """A sort's split points, from the samples of its parent's `shards` (once: recomputed
        outputs give the same sample; with waves, the first wave's)."""
        parent = stage.parents[0]
        if parent in self.splitters:
            return
        outs = self.outputs[parent]
        samples = [np.asarray(outs[s]["sample"]) for s in shards if s in outs]
        samples = [s for s in samples if len(s)]
        if not samples:
            self.splitters[parent] = []
            return
        keys = np.sort(np.concatenate(samples), kind="stable")
        n = stage.shards
        cuts = [keys[len(keys) * i // n].item() for i in range(1, n)]
        self.splitters[parent] = cuts


def _span(shards: list[int]) -> str:
    return ", ".join(map(str, shards)) if len(shards) <= 12 else f"{len(shards)} shards"
