"""PipelineState without I/O: which stage shards run next, what their ends mean."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shardmill.errors import PipelineFailed
from shardmill.pipeline.api import Pipeline
from shardmill.pipeline.driver import FETCH_FAILED, PipelineState, Run
from shardmill.pipeline.plan import compile_stages
from shardmill.wire.protocol import ErrorInfo


def _state() -> PipelineState:
    src = Pipeline.from_tables([{"k": np.arange(4)} for _ in range(3)])
    steps = src.repartition("k", partitions=2).collect().steps
    return PipelineState(compile_stages(steps), edge_budget=0)  # no bound: a stage at a time


def _next(state: PipelineState) -> Run | None:
    runs = state.next_runs([])
    assert len(runs) <= 1
    return runs[0] if runs else None


def _out(holder: str, digest: str = "d") -> dict[str, Any]:
    return {"holder": holder, "key": "", "out": f"o-{holder}", "runs": 1, "digest": digest}


def _fetch_failed(holder: str) -> ErrorInfo:
    return ErrorInfo(kind="error", type=FETCH_FAILED, message=f"gone [holder={holder}]")


def test_stages_run_in_order_and_reduce_tasks_name_every_map_output() -> None:
    state = _state()
    first = _next(state)
    assert first is not None and (first.stage, first.shards) == (0, [0, 1, 2])
    state.ended(first, [_out("a"), _out("b"), _out("a")], [None] * 3)
    second = _next(state)
    assert second is not None and (second.stage, second.shards) == (1, [0, 1])
    pieces = second.tasks[1]["input"]["parents"][0]
    assert [p["out"] for p in pieces] == ["o-a", "o-b", "o-a"]  # in map-shard order
    assert all(p["request"] == {"part": 1, "run": 0} for p in pieces)
    state.ended(second, [{"table": {"k": np.arange(2)}}] * 2, [None] * 2)
    assert _next(state) is None


def test_a_lost_holder_reruns_only_its_outputs_then_only_the_failed_reduce() -> None:
    # Given map outputs on holders a and b, and a reduce whose shard 1 could not fetch from b
    state = _state()
    first = _next(state)
    assert first is not None
    state.ended(first, [_out("a"), _out("b"), _out("a")], [None] * 3)
    reduce = _next(state)
    assert reduce is not None
    state.ended(reduce, [{"table": {}}, None], [None, _fetch_failed("b")])
    # When the pipeline moves on / Then map shard 1 (b's) runs again, then reduce shard 1
    again = _next(state)
    assert again is not None and (again.stage, again.shards) == (0, [1])
    state.ended(again, [_out("c")], [None])
    last = _next(state)
    assert last is not None and (last.stage, last.shards) == (1, [1])
    assert state.progress[0].recomputed == [1]
    assert any("could not fetch from b" in line for line in state.story)


def test_other_bytes_from_a_rerun_send_every_consumer_back() -> None:
    state = _state()
    first = _next(state)
    assert first is not None
    state.ended(first, [_out("a"), _out("b"), _out("a")], [None] * 3)
    reduce = _next(state)
    assert reduce is not None
    state.ended(reduce, [{"table": {}}, None], [None, _fetch_failed("b")])
    again = _next(state)
    assert again is not None
    state.ended(again, [_out("c", digest="other")], [None])
    # The reduce shard 0 read the old bytes of map shard 1: both reduce shards run again
    last = _next(state)
    assert last is not None and (last.stage, last.shards) == (1, [0, 1])
    assert any("not deterministic" in line for line in state.story)


def test_a_task_error_fails_the_pipeline_naming_stage_and_shard() -> None:
    state = _state()
    first = _next(state)
    assert first is not None
    err = ErrorInfo(kind="error", type="ValueError", message="bad row", traceback="tb")
    with pytest.raises(PipelineFailed, match=r"stage 0 \(3 tables\) shard 2 failed: ValueError"):
        state.ended(first, [_out("a"), _out("a"), None], [None, None, err])


def test_the_record_brings_it_back_as_it_was() -> None:
    state = _state()
    first = _next(state)
    assert first is not None
    state.ended(first, [_out("a"), _out("b"), _out("a")], [None] * 3)
    back = PipelineState.from_record(state.record())
    nxt = _next(back)
    assert nxt is not None and (nxt.stage, nxt.shards) == (1, [0, 1])
    assert back.token == state.token and back.story == state.story
