"""What the dashboard and the report compute from a job's story: the order jobs are listed in,
what `retrying N` counts, slots alive at once, when Karp-Flatt means nothing, the histogram's
axes, the cluster history's rates."""

from __future__ import annotations

import re

from shardmill.observe.history import History, Sample
from shardmill.observe.report import histogram_svg, render_report
from shardmill.observe.timeline import Timeline
from shardmill.observe.views import newest_first, retrying_now, split_error
from shardmill.wire.protocol import AttemptInfo, ErrorInfo, JobInfo, ShardInfo

T0 = 1000.0


def attempt(n: int, worker: str, start: float, end: float | None, outcome: str) -> AttemptInfo:
    error = None if outcome in ("ok", "running") else ErrorInfo(kind="error", message="x")
    return AttemptInfo(
        attempt=n,
        worker=worker,
        started=T0 + start,
        ended=None if end is None else T0 + end,
        outcome=outcome,
        error=error,
    )


def job(shards: list[ShardInfo], *, end: float | None = 10.0, **kw: object) -> JobInfo:
    fields: dict[str, object] = {
        "job_id": "j",
        "name": "",
        "op": "map",
        "state": "done" if end else "running",
        "shards_total": len(shards),
        "shards_done": 0,
        "shards_failed": 0,
        "shards_running": 0,
        "submitted_at": T0,
        "finished_at": None if end is None else T0 + end,
        "shards": shards,
    }
    return JobInfo.model_validate({**fields, **kw})


def shard(i: int, state: str, *history: AttemptInfo) -> ShardInfo:
    return ShardInfo(index=i, state=state, attempts=len(history), history=list(history))


def test_running_jobs_come_first_then_the_newest() -> None:
    # Given jobs submitted at 1, 2, 3, of which the oldest still runs
    old = job([], end=None, job_id="old", submitted_at=1.0)
    mid = job([], job_id="mid", submitted_at=2.0)
    new = job([], job_id="new", submitted_at=3.0)
    # Then the running one leads, the finished ones follow newest first
    assert [j.job_id for j in newest_first([mid, old, new])] == ["old", "new", "mid"]


def test_retrying_counts_the_shards_waiting_to_run_again_and_nothing_else() -> None:
    # Given a shard whose first attempt raised and that waits to run again (one attempt in
    # its story), one retried and done, one running its first attempt
    shards = [
        shard(0, "waiting", attempt(1, "w1", 0, 1, "error")),
        shard(1, "done", attempt(1, "w1", 0, 1, "lost"), attempt(2, "w2", 1, 2, "ok")),
        shard(2, "leased", attempt(1, "w2", 0, None, "running")),
        shard(3, "leased", attempt(1, "w1", 0, 1, "timeout"), attempt(2, "w2", 1, None, "running")),
    ]
    # Then "retrying" is the unfinished ones with a failure behind them
    assert retrying_now(shards) == [0, 3]


def test_a_jobs_error_is_split_from_its_next_step() -> None:
    text = "job j failed: shard 0 ...\nTraceback ...\nValueError: x\nnext step: fix it"
    assert split_error(text) == (
        "job j failed: shard 0 ...\nTraceback ...\nValueError: x",
        "next step: fix it",
    )
    assert split_error("cancelled by a client") == ("cancelled by a client", "")
    assert split_error(None) == ("", "")


def test_a_lost_worker_and_its_stand_in_count_as_one_slot_alive() -> None:
    # Given two one-slot workers, one lost at 4 s and replaced by a third from 5 s
    shards = [
        shard(0, "done", attempt(1, "a", 0, 4, "lost"), attempt(2, "c", 5, 9, "ok")),
        shard(1, "done", attempt(1, "b", 0, 3, "ok")),
        shard(2, "done", attempt(1, "b", 3, 8, "ok")),
    ]
    eff = Timeline.of(job(shards)).efficiency()
    # Then p is the two slots alive at once, not the three that ever ran
    assert eff.lanes == 3 and eff.slots == 2
    assert abs(eff.speedup - 1.2) < 1e-9 and abs(eff.efficiency - 0.6) < 1e-9


def test_karp_flatt_is_left_out_for_a_job_too_short_to_mean_anything() -> None:
    # Given a job of two 0.1 s shards on two slots, over in 0.2 s
    quick = [shard(i, "done", attempt(1, f"w{i}", 0, 0.1, "ok")) for i in range(2)]
    eff = Timeline.of(job(quick, end=0.2)).efficiency()
    assert eff.karp_flatt is None and "under 1 s" in eff.karp_flatt_why
    # And one as long, but with only one round of shards
    slow = [shard(i, "done", attempt(1, f"w{i}", 0, 5, "ok")) for i in range(2)]
    eff = Timeline.of(job(slow, end=6)).efficiency()
    assert eff.karp_flatt is None and "2 merged shards for 2 slots" in eff.karp_flatt_why
    # Then a job of several rounds gets its number, and the report says why when it has none
    rounds = [shard(i, "done", attempt(1, f"w{i % 2}", i // 2, i // 2 + 1, "ok")) for i in range(8)]
    assert Timeline.of(job(rounds, end=5)).efficiency().karp_flatt is not None
    page = render_report(Timeline.of(job(quick, end=0.2)))
    assert "No Karp-Flatt metric for this job: the job took 0.200 s" in page


def test_the_histogram_has_axes_and_counts() -> None:
    svg = histogram_svg([0.1] * 5 + [0.3] * 2 + [0.5], bins=4)
    counts = re.findall(r'class="count"[^>]*>(\d+)<', svg)
    assert counts == ["5", "2", "1"]
    assert "seconds a shard ran" in svg and ">shards</text>" in svg
    assert len(re.findall(r'class="axis"', svg)) == 2


def test_the_report_marks_lost_workers_and_shows_tracebacks_as_code() -> None:
    lost = attempt(1, "gone", 0, 1, "lost")
    raised = AttemptInfo(
        attempt=2,
        worker="w",
        started=T0 + 1,
        ended=T0 + 2,
        outcome="error",
        error=ErrorInfo(kind="error", type="ValueError", message="v", traceback="Traceback\nV"),
    )
    page = render_report(Timeline.of(job([shard(0, "failed", lost, raised)], state="failed")))
    assert "gone (lost)" in page and 'class="lost"' in page
    assert '<pre class="traceback"><code class="language-pytb">Traceback\nV</code></pre>' in page


def test_the_history_rates_skip_gaps_and_counter_resets() -> None:
    history = History()
    for at, done in ((0.0, 0.0), (1.0, 10.0), (2.0, 30.0), (3.0, 5.0), (5.0, 25.0)):
        history.add(Sample(at, {"done": done, "busy": 1.0}, {"w": (50.0, 1 << 20, 0.1)}))
    cols = history.columns()
    # A master restart sets its counter back: no rate there, not a negative one
    assert cols["rate"] == [None, 10.0, 20.0, None, 10.0]
    assert cols["workers"]["w"]["cpu"] == [50.0] * 5 and cols["busy"] == [1.0] * 5
