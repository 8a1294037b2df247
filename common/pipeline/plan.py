"""From a Pipeline's steps to stages: narrow steps fuse into the stage where the rows are; each
wide step (groupby, sort, join, repartition) ends a stage with a partitioned output and starts
the next, which reads its partition from every output of the stage(s) before (a small DAG)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardmill.data.datasets import open_dataset
from shardmill.data.paths import check_data_path, is_url
from shardmill.errors import JobSpecError
from shardmill.wire.spec import JobSpec, ScanShard

SAMPLES_PER_SHARD = 256  # keys each shard offers for a sort's splitters


@dataclass
class Stage:
    index: int
    shards: int
    label: str
    parents: list[int] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)  # per shard, for a first stage
    combine: dict[str, Any] = field(default_factory=dict)  # how a shuffled stage joins pieces
    ops: list[dict[str, Any]] = field(default_factory=list)
    output: dict[str, Any] = field(default_factory=lambda: {"kind": "collect"})

    @property
    def shuffles(self) -> bool:
        """Whether its output is partitioned on this worker's disk for the next stage."""
        return self.output["kind"] in ("hash", "range")


def compile_stages(
    steps: tuple[dict[str, Any], ...], *, data_roots: Sequence[Path] = ()
) -> list[Stage]:
    """The stages of a pipeline's steps; datasets must lie under `data_roots` (the master's
    --data-root), when given."""
    stages: list[Stage] = []
    _build(steps, stages, data_roots)
    return stages


def _build(steps: tuple[dict[str, Any], ...], stages: list[Stage], roots: Sequence[Path]) -> int:
    """Append the stages of `steps`; returns the index of the last one."""
    cur = _source(steps[0], len(stages), roots)
    stages.append(cur)
    for step in steps[1:]:
        op = step["op"]
        if op in ("map", "filter", "map_partitions"):
            cur.ops.append({"op": op, "fn": step["fn"]})
            cur.label += f" | {op} {step['fn']}"
        elif op == "collect":
            cur.output = {"kind": "collect"}
        elif op == "write":
            cur.output = {"kind": "write", "path": step["path"]}
        else:
            cur = _wide(step, cur, stages, roots)
    return cur.index


def _wide(step: dict[str, Any], cur: Stage, stages: list[Stage], roots: Sequence[Path]) -> Stage:
    op = step["op"]
    parts = step.get("partitions") or cur.shards
    parents = [cur.index]
    if op == "groupby":
        agg = {"keys": step["keys"], "aggs": step["aggs"]}
        cur.output = {"kind": "hash", "keys": step["keys"], "partitions": parts, "agg": agg}
        combine: dict[str, Any] = {"combine": "agg", "agg": agg}
        label = f"groupby {','.join(step['keys'])}"
    elif op == "sort":
        cur.output = {"kind": "range", "key": step["key"], "samples": SAMPLES_PER_SHARD}
        combine = {"combine": "sort", "key": step["key"], "descending": step["descending"]}
        label = f"sort {step['key']}" + (" descending" if step["descending"] else "")
    elif op == "repartition":
        cur.output = {"kind": "hash", "keys": step["keys"], "partitions": parts}
        combine = {"combine": "concat"}
        label = f"repartition {','.join(step['keys'])}"
    else:  # join: the other side's stages come first, then both shuffle by the key
        right = stages[_build(tuple(step["other"]), stages, roots)]
        for side in (cur, right):
            side.output = {"kind": "hash", "keys": [step["on"]], "partitions": parts}
        parents.append(right.index)
        combine = {"combine": "join", "on": step["on"], "how": step["how"]}
        label = f"{step['how']} join on {step['on']}"
    stage = Stage(len(stages), parts, label, parents=parents, combine=combine)
    stages.append(stage)
    return stage


def _source(step: dict[str, Any], index: int, roots: Sequence[Path]) -> Stage:
    if step["op"] == "tables":
        inputs = [{"kind": "table", "table": t} for t in step["tables"]]
        return Stage(index, len(inputs), f"{len(inputs)} tables", inputs=inputs)
    if step["op"] != "read":
        raise JobSpecError(f"a pipeline starts with read or from_tables, not {step['op']}")
    path = step["dataset"]
    if path and roots and not is_url(path):
        path = check_data_path(path, roots)
    spec = JobSpec(op="pipeline", dataset=path, shards=step["shards"], **step["spec"])
    dataset = open_dataset(spec)
    parts = dataset.split(
        shards=spec.shards, rows_per_shard=spec.rows_per_shard, target_bytes=spec.target_bytes
    )
    names = list(dataset.names)
    inputs = [
        {
            "kind": "scan",
            "names": names,
            "source": ScanShard(source=p.source, first_row=p.first_row).model_dump(mode="python"),
        }
        for p in parts
    ]
    return Stage(index, len(inputs), f"read {dataset.label}", inputs=inputs)
