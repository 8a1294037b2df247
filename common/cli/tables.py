"""How the CLI shows things: tables of jobs, workers and shards, results, JSON output."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from shardmill.errors import Failed
from shardmill.wire.codec import is_array, is_numpy_scalar
from shardmill.wire.protocol import JobInfo, ShardInfo, WorkerInfo

console = Console()


def say(text: str) -> None:
    """`text` as it is, on whole lines: no markup, no colouring, never wrapped or cut at the
    console's width (an error or a path must survive a copy, a log and a pipe)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class Col:
    """A table column. An "id" or a "word" (a state, a count) is never cut or wrapped; "text"
    wraps; when the table does not fit the terminal, the lowest `rank` goes first."""

    header: str
    rank: int = 0  # 0: always shown
    kind: str = "text"  # "id", "word", "num" (a word, right-aligned) or "text"

    def widths(self, cells: list[str]) -> tuple[int, int]:
        """(narrowest, natural) width of this column over `cells`."""
        natural = max([len(self.header), *(len(c) for c in cells)])
        if self.kind == "text":
            return min(natural, max(len(self.header), TEXT_MIN)), natural
        return natural, natural


TEXT_MIN = 10  # a text column is not squeezed below this (or its header)
GAP = 3  # per column: its padding and the blank divider (SIMPLE_HEAD), less one at the edge


def show_table(cols: list[Col], rows: list[list[str]], *, empty: str = "") -> None:
    """`rows` as a table no wider than the terminal, then the columns it left out and how to
    see them; with no rows, `empty` (what to do next) instead of bare headers."""
    if not rows and empty:
        console.print(empty, markup=False, highlight=False)
        return
    width = console.width
    shown = fitting(cols, rows, width)
    console.print(fit(cols, rows, shown))
    hidden = [c.header for i, c in enumerate(cols) if i not in shown]
    if hidden:
        full = sum(c.widths([r[i] for r in rows])[1] + GAP for i, c in enumerate(cols)) - 1
        console.print(
            f"columns hidden to fit {width}: {', '.join(hidden)}; to see them: --json, "
            f"or a terminal {full} wide (COLUMNS={full})",
            markup=False,
            highlight=False,
        )


def fitting(cols: list[Col], rows: list[list[str]], width: int) -> list[int]:
    """The columns a table of `rows` shows within `width`: lesser columns are dropped until
    the rest fit; ids stay whole (a job id can always be copied from it), text wraps."""
    shown = list(range(len(cols)))
    least = [c.widths([r[i] for r in rows])[0] for i, c in enumerate(cols)]
    while sum(least[i] for i in shown) + GAP * len(shown) - 1 > width:
        droppable = [i for i in shown if cols[i].rank > 0]
        if not droppable:
            break
        shown.remove(min(droppable, key=lambda i: cols[i].rank))
    return shown


def fit(cols: list[Col], rows: list[list[str]], shown: list[int]) -> Table:
    """The table of `rows` with the columns `shown`."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for i in shown:
        c = cols[i]
        table.add_column(
            c.header,
            min_width=c.widths([r[i] for r in rows])[0],
            no_wrap=c.kind != "text",
            overflow="fold",
            justify="right" if c.kind == "num" else "left",
        )
    for r in rows:
        table.add_row(*(r[i] for i in shown))
    return table


def out(args: argparse.Namespace, data: Any, human: Any) -> None:
    """`data` as JSON with --json, else call `human()` to print it for people."""
    if getattr(args, "json", False):
        print(json.dumps(data))
    else:
        human()


def to_jsonable(value: Any) -> Any:
    if isinstance(value, Failed):
        return value.to_json()
    if is_array(value) or is_numpy_scalar(value):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def show_value(value: Any) -> None:
    # A table for per-column statistics (1-D arrays); anything else prints as it is.
    import numpy as np

    if isinstance(value, dict) and "mean" in value and np.ndim(value["mean"]) == 1:
        stats = [k for k in ("mean", "std", "min", "max", "sum") if k in value]
        table = Table("column", *stats)
        first = np.atleast_1d(value.get("mean", []))
        labels = list(value.get("columns", range(len(first))))
        for i in range(len(first)):
            row = (f"{np.atleast_1d(value[k])[i]:.6g}" for k in stats)
            table.add_row(str(labels[i]), *row)
        console.print(table)
        console.print(f"rows: {value.get('count')}, shards merged: {value.get('shards_merged')}")
        return
    console.print(to_jsonable(value))


def show_job(info: JobInfo) -> None:
    """The job's row, then what the row has no room for (owner, timing, failed attempts, lost
    workers), its error, and with --shards a table of its shards."""
    from shardmill.cli.details import job_details

    show_jobs([info])
    for line in job_details(info):
        say(line)
    if info.error:
        say(info.error)
    if info.shards:
        rows = [
            [str(s.index), s.state, str(s.attempts), _last_worker(s), str(s.merged)]
            for s in info.shards
        ]
        show_table(SHARD_COLUMNS, rows)


def _last_worker(s: ShardInfo) -> str:
    """The worker holding the shard now, else the one its last attempt ran on (as `why`)."""
    return s.worker or (s.history[-1].worker if s.history else "-")


NO_JOBS = (
    "no jobs: submit one with `shardmill submit column_stats DATA.npy --wait` "
    "(or `client.map(...)` from Python)"
)
NO_WORKERS = (
    "no workers: start one with `shardmill worker --master tcp://HOST:5555 --import MODULE` "
    "(the master's worker port; MODULE holds your task functions)"
)
JOB_COLUMNS = [
    Col("job", kind="id"),
    Col("name", rank=1),
    Col("owner", rank=5),
    Col("op", rank=4, kind="word"),
    Col("state", kind="word"),
    Col("done", rank=7, kind="num"),
    Col("failed", rank=3, kind="num"),
    Col("running", rank=2, kind="num"),
    Col("total", rank=6, kind="num"),
    Col("elapsed", rank=5, kind="num"),
]
SHARD_COLUMNS = [
    Col("shard", kind="num"),
    Col("state", kind="word"),
    Col("attempts", rank=2, kind="num"),
    Col("worker", kind="id"),
    Col("merged", rank=1, kind="num"),
]
WORKER_COLUMNS = [
    Col("worker", kind="id"),
    Col("host", rank=2),
    Col("pid", rank=1, kind="num"),
    Col("slots", rank=6, kind="num"),
    Col("busy", rank=7, kind="num"),
    Col("heartbeat age", rank=5, kind="num"),
    Col("rtt", rank=3, kind="num"),
    Col("window", rank=3, kind="num"),
    Col("done", rank=4, kind="num"),
    Col("failed", rank=4, kind="num"),
    Col("shm", rank=3),
    Col("shuffle", rank=2, kind="num"),
]


def show_jobs(jobs: list[JobInfo]) -> None:
    rows = [
        [
            j.job_id,
            j.name or "-",
            j.owner or "-",
            j.op,
            j.state,
            str(j.shards_done),
            str(j.shards_failed),
            str(j.shards_running),
            str(j.shards_total),
            elapsed(j),
        ]
        for j in jobs
    ]
    show_table(JOB_COLUMNS, rows, empty=NO_JOBS)


def elapsed(j: JobInfo, now: float | None = None) -> str:
    """Since submit: to its end when finished, to `now` (the wall clock) while it runs."""
    end = j.finished_at if j.finished_at is not None else (now or time.time())
    return f"{end - j.submitted_at:.2f} s"


def rate(j: JobInfo, now: float | None = None) -> str:
    """Shards done per second of the job's own run: from its first dispatch to its end (or to
    `now` while it runs), whenever it is watched."""
    start = j.started_at if j.started_at is not None else j.submitted_at
    end = j.finished_at if j.finished_at is not None else (now or time.time())
    return f"{j.shards_done / max(end - start, 1e-3):.1f} shards/s"


def show_workers(workers: list[WorkerInfo]) -> None:
    rows = [
        [
            w.worker_id + (" (draining)" if w.draining else ""),
            w.hostname,
            str(w.pid),
            str(w.slots),
            f"{w.busy}+{w.queued}" if w.queued else str(w.busy),
            f"{w.heartbeat_age:.2f} s",
            "-" if w.rtt is None else f"{w.rtt * 1000:.2f} ms",
            str(w.window),
            str(w.shards_done),
            str(w.shards_failed),
            "yes" if w.shared_memory else "no",
            f"{w.shuffle_bytes / 2**20:.1f} MiB",
        ]
        for w in workers
    ]
    show_table(WORKER_COLUMNS, rows, empty=NO_WORKERS)


def show_story(job_id: str, shard: ShardInfo, restarts: Sequence[float] = ()) -> None:
    """`shardmill why`: every attempt of one shard, with its worker, outcome and error, and
    the master's restarts between (or during) them."""
    console.print(
        f"job {job_id} shard {shard.index}: [bold]{shard.state}[/], "
        f"{shard.attempts} attempt(s), lease {shard.worker or '-'}, "
        f"merged {shard.merged}x"
    )
    pending = sorted(restarts)
    for a in shard.history:
        while pending and pending[0] <= a.started:
            console.print(f"  -- the master restarted at {_clock(pending.pop(0))} --")
        took = f"{a.ended - a.started:.3f} s" if a.ended is not None else "running"
        kind = " (backup)" if a.backup else ""
        across = [t for t in pending if a.ended is None or t < a.ended]
        if across:
            kind += f" (across the master's restart at {_clock(across[0])})"
        line = f"  attempt {a.attempt}{kind} on {a.worker}: {a.outcome} ({took})"
        if a.error is not None:
            sig = f", signal {a.error.signal}" if a.error.signal else ""
            code = f", exit code {a.error.exit_code}" if a.error.exit_code is not None else ""
            line += f" - {a.error.type} {a.error.message}{sig}{code}"
        console.print(line, markup=False, highlight=False)
        if a.output:
            console.print("  output:", markup=False, highlight=False)
            console.print(_indent(a.output), markup=False, highlight=False)
        if a.error is not None and a.error.traceback:
            console.print(a.error.traceback, markup=False, highlight=False)


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall % 1 * 1000):03d}"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip("\n").split("\n"))
