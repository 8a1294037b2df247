"""Pipelines in the CLI: `status`, `jobs` and `watch` show a pipeline's stages."""

from __future__ import annotations

import re
import time

from shardmill.cli.tables import Col, console, show_table
from shardmill.pipeline.job import PipelineJob
from shardmill.wire.protocol import PipelineInfo, StageInfo

PIPELINE_ID = re.compile(r"^p[0-9a-f]{11}$")  # job ids are hex only: a "p" never starts one

STAGE_COLUMNS = [
    Col("stage", kind="num"),
    Col("what", rank=1),
    Col("done", kind="num"),
    Col("shuffled", rank=4, kind="num"),
    Col("runs", rank=2, kind="num"),
    Col("fetched", rank=3, kind="num"),
    Col("recomputed", rank=5, kind="num"),
    Col("waiting", rank=6),
    Col("edge (now/peak/budget)", rank=7),
]
PIPELINE_COLUMNS = [
    Col("pipeline", kind="id"),
    Col("name", rank=1),
    Col("owner", rank=2),
    Col("state", kind="word"),
    Col("stages", kind="num"),
    Col("running job", rank=3, kind="id"),
]


def is_pipeline(ident: str) -> bool:
    return bool(PIPELINE_ID.match(ident))


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def stage_row(s: StageInfo) -> list[str]:
    return [
        str(s.index),
        s.label,
        f"{s.done}/{s.shards}",
        _mib(s.bytes_shuffled),
        str(s.runs),
        _mib(s.bytes_fetched),
        str(len(s.recomputed)),
        s.waiting or "-",
        _edge(s),
    ]


def _edge(s: StageInfo) -> str:
    """What its output holds waiting for the next stage, against the edge budget."""
    if not s.edge_budget:
        return "-"
    mib = 2**20
    held = f"{s.edge_bytes / mib:.1f}/{s.edge_peak / mib:.1f}/{s.edge_budget / mib:.1f} MiB"
    return held + (f", {s.waves} waves" if s.waves else "")


def show_pipeline(info: PipelineInfo) -> None:
    show_pipelines([info])
    show_table(STAGE_COLUMNS, [stage_row(s) for s in info.stages])
    for line in info.story:
        console.print(f"  {line}", markup=False, highlight=False)
    if info.error:
        console.print(info.error, markup=False, highlight=False)


def show_pipelines(infos: list[PipelineInfo]) -> None:
    rows = [
        [
            p.pipeline_id,
            p.name or "-",
            p.owner or "-",
            p.state,
            f"{sum(s.done == s.shards for s in p.stages)}/{len(p.stages)}",
            p.running_job or "-",
        ]
        for p in infos
    ]
    show_table(PIPELINE_COLUMNS, rows)


def watch_pipeline(job: PipelineJob, timeout: float | None) -> PipelineInfo:
    """A line whenever a stage moves, until the pipeline ends (plain lines: fine in a pipe)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: dict[int, str] = {}
    while True:
        info = job.status()
        for s in info.stages:
            line = f"stage {s.index} {s.label}: {s.done}/{s.shards}" + (
                f" ({s.waiting})" if s.waiting else ""
            )
            if seen.get(s.index) != line:
                seen[s.index] = line
                print(line, flush=True)
        if info.state != "running" or (deadline is not None and time.monotonic() > deadline):
            print(f"pipeline {info.pipeline_id} {info.state}", flush=True)
            return info
        time.sleep(0.2)  # a person watching: five looks a second are plenty
