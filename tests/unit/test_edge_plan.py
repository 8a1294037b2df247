"""The edge budget without I/O: a producer paused within it, waves absorbed, waves lost."""

from __future__ import annotations

from typing import Any

import numpy as np

from shardmill.pipeline.api import Pipeline
from shardmill.pipeline.driver import FETCH_FAILED, PipelineState, Run
from shardmill.pipeline.plan import compile_stages
from shardmill.wire.protocol import ErrorInfo

SIZE = 100  # bytes each map output holds


def _state(tail: str, shards: int = 10, budget: int = 350) -> PipelineState:
    src = Pipeline.from_tables([{"k": np.arange(4), "v": np.arange(4)} for _ in range(shards)])
    if tail == "stream":
        p = src.repartition("k", partitions=2).map("m:slow").collect()
    elif tail == "groupby":
        p = src.groupby("k", partitions=2).agg(n=("v", "count")).collect()
    else:
        p = src.sort("k").collect()
    return PipelineState(compile_stages(p.steps), edge_budget=budget)


def _value(run: Run, shard: int) -> dict[str, Any]:
    if run.stage == 1 and run.absorb is None:
        return {"table": {"k": np.arange(1)}, "rows": 1}
    kind = "s" if run.absorb is None else f"a{run.wave}-"
    return {
        "holder": f"m{shard % 2}" if run.absorb is None else "absorber",  # two mappers
        "key": "",
        "out": f"{kind}{run.stage}-{shard}",
        "runs": 1,
        "bytes": SIZE,
        "digest": "d",
        "sample": np.arange(4),
    }


def _drive(state: PipelineState, width: int = 2, lose: str = "", when: str = "last") -> list[Run]:
    """Runs the pipeline, ending the oldest run first; a run of the last stage (`when`:
    "last") or the second wave absorbed ("absorb") fails once to fetch from `lose` (a worker
    gone with what it held). Returns every run, in start order."""
    running: list[Run] = []
    started: list[Run] = []
    lost = False
    for _ in range(200):
        if state.done():
            return started
        new = state.next_runs(running, width)
        running += new
        started += new
        assert running, "nothing runs, yet the pipeline is not done"
        run = running.pop(0)
        last = run.stage == 1 and run.absorb is None
        if lose and (last if when == "last" else run.wave == 1):
            err = ErrorInfo(kind="error", type=FETCH_FAILED, message=f"gone [holder={lose}]")
            state.ended(run, [None] * len(run.shards), [err] * len(run.shards))
            lose, lost = "", True
            continue
        state.ended(run, [_value(run, s) for s in run.shards], [None] * len(run.shards))
        # within the budget; after a loss, one output more may refill a gap
        slack = SIZE if lost else 0
        assert state.waiting_bytes(0, running) <= (state.edge_budget or 1 << 60) + slack
    raise AssertionError("the pipeline did not end")


def test_a_streaming_consumer_absorbs_every_wave_and_the_producer_stays_in_budget() -> None:
    state = _state("stream")
    runs = _drive(state)
    assert state.peaks[0] <= 350
    waves = state.waves[0]
    assert [w["lo"] for w in waves] == [0] + [w["hi"] for w in waves[:-1]]
    assert waves[-1]["hi"] == 10 and len(waves) > 1
    absorbs = [r for r in runs if r.absorb == 0]
    assert all(t["ops"] == [{"op": "map", "fn": "m:slow"}] for r in absorbs for t in r.tasks)
    final = [r for r in runs if r.stage == 1 and r.absorb is None]
    assert len(final) == 1 and all(t["ops"] == [] for t in final[0].tasks)
    pieces = final[0].tasks[0]["input"]["parents"][0]
    assert [p["out"] for p in pieces] == [f"a{i}-1-0" for i in range(len(waves))]
    let_go = sorted(out for _, _, out in state.dropping)
    assert let_go == sorted(f"s0-{s}" for s in range(10))


def test_a_groupby_folds_waves_then_reads_what_no_wave_took() -> None:
    state = _state("groupby")
    runs = _drive(state)
    assert state.peaks[0] <= 350
    absorb = next(r for r in runs if r.absorb == 0)
    assert absorb.tasks[0]["input"]["partial"] is True
    assert absorb.tasks[0]["output"] == {"kind": "run"}
    final = next(r for r in runs if r.stage == 1 and r.absorb is None)
    outs = [p["out"] for p in final.tasks[1]["input"]["parents"][0]]
    absorbed = [o for o in outs if o.startswith("a")]
    assert absorbed and outs[: len(absorbed)] == absorbed  # absorbed runs first, in wave order
    rest = [int(o.split("-")[1]) for o in outs[len(absorbed) :]]
    assert rest == list(range(state.waves[0][-1]["hi"], 10))


def test_a_sort_cuts_its_waves_by_the_first_waves_sample() -> None:
    state = _state("sort")
    runs = _drive(state)
    absorb = next(r for r in runs if r.absorb == 0)
    assert absorb.tasks[0]["input"]["combine"] == "sort"
    cuts = state.splitters[0]
    assert len(cuts) == 9 and absorb.tasks[0]["input"]["parents"][0][0]["request"]["hi"] == cuts[0]
    assert absorb.tasks[0]["input"]["descending"] is False  # the last run merges, reversed


def test_lost_absorbed_runs_send_their_waves_back_and_are_absorbed_again() -> None:
    state = _state("groupby")
    runs = _drive(state, lose="absorber")
    waves = len(state.waves[0])
    again = [r for r in runs if r.absorb == 0 and r.wave == 0]
    assert len(again) == 2 and again[1].shards == [0, 1]
    assert any("absorbed again, from its shards" in line for line in state.story)
    maps = [s for r in runs if r.stage == 0 for s in r.shards]
    assert sorted(maps) == sorted(list(range(10)) + list(range(8)))  # the lost waves' shards
    assert state.peaks[0] <= 350 and len(state.waves[0]) == waves


def test_lost_map_outputs_no_wave_took_run_again_alone() -> None:
    state = _state("groupby")
    runs = _drive(state, lose="m1")
    maps = [s for r in runs if r.stage == 0 for s in r.shards]
    taken = state.waves[0][-1]["hi"]
    assert sorted(maps) == sorted([*range(10), *(s for s in range(taken, 10) if s % 2)])
    assert all(len(r.shards) == 2 for r in runs if r.absorb == 0)  # no wave absorbed again


def test_no_budget_runs_a_stage_whole_without_waves() -> None:
    state = _state("stream", budget=0)
    runs = _drive(state)
    assert [len(r.shards) for r in runs] == [10, 2] and not state.waves.get(0)


def test_the_record_keeps_waves_and_peaks() -> None:
    state = _state("groupby")
    _drive(state)
    back = PipelineState.from_record(state.record())
    assert back.waves == state.waves and back.peaks == state.peaks
    assert back.edge_budget == 350


def test_a_wave_losing_its_outputs_mid_absorb_is_absorbed_again_within_budget() -> None:
    state = _state("stream", budget=350)
    runs = _drive(state, lose="m1", when="absorb")
    assert state.peaks[0] <= 350
    assert sum(w["hi"] - w["lo"] for w in state.waves[0]) == 10  # every output absorbed once
    maps = [s for r in runs if r.stage == 0 for s in r.shards]
    assert set(maps) == set(range(10)) and len(maps) > 10, maps


def test_a_blocked_wave_filling_the_edge_is_given_up_not_overrun() -> None:
    # Given a wave of shards 0-2 whose shard 1 was lost, while shards 0 and 2 fill the edge
    state = _state("stream", budget=350)
    state.outputs[0] = {s: {**_value(Run(0, [s], [], ""), s), "bytes": 150} for s in (0, 2)}
    state.waves[0] = [{"lo": 0, "hi": 3, "parts": {}}]
    # When it runs on
    first = state.next_runs([], 2)
    # Then the wave is given up (nothing was absorbed: nothing to let go) and its outputs
    # waiting form a wave of their own, instead of shard 1 running beyond the budget
    assert [(r.absorb, r.stage) for r in first] == [(0, 1)]
    assert any("gives up its wave" in line for line in state.story)
    _drive(state)
    assert state.peaks[0] <= 350
    assert sorted(s for w in state.waves[0] for s in range(w["lo"], w["hi"])) == list(range(10))
