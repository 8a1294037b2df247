"""A job as a Chrome trace (the JSON Object Format that Perfetto and chrome://tracing open).

One process per worker, one thread per slot of it: each attempt is a complete ("X") event on
its slot's track, named by shard and coloured by outcome; metadata ("M") events name the
tracks. Times are microseconds since the job was submitted.
"""

from __future__ import annotations

from typing import Any

from shardmill.observe.timeline import Timeline

# Chrome's reserved colour names (catapult's color_scheme), by outcome.
COLOURS = {"ok": "good", "running": "generic_work", "superseded": "grey", "timeout": "bad"}


def chrome_trace(timeline: Timeline) -> dict[str, Any]:
    job = timeline.job
    pids = {w: i + 1 for i, w in enumerate(dict.fromkeys(w for w, _ in timeline.lanes))}
    events: list[dict[str, Any]] = []
    for worker, pid in pids.items():
        events.append(_meta("process_name", pid, 0, f"worker {worker}"))
        events.append(_meta("process_sort_index", pid, 0, pid, key="sort_index"))
    for worker, slot in timeline.lanes:
        events.append(_meta("thread_name", pids[worker], slot, f"slot {slot}"))
    for bar in timeline.bars:
        args: dict[str, Any] = {"shard": bar.shard, "attempt": bar.attempt, "outcome": bar.outcome}
        if bar.error:
            args["error"] = bar.error
        event = {
            "name": f"shard {bar.shard}" + (f" (attempt {bar.attempt})" if bar.attempt > 1 else ""),
            "cat": bar.outcome,
            "ph": "X",
            "ts": round(bar.start * 1e6, 3),
            "dur": round(max(0.0, bar.seconds) * 1e6, 3),
            "pid": pids[bar.worker],
            "tid": bar.slot,
            "cname": COLOURS.get(bar.outcome, "terrible"),
            "args": args,
        }
        events.append(event)
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "job_id": job.job_id,
            "name": job.name,
            "op": job.op,
            "state": job.state,
            "submitted_at": job.submitted_at,
        },
    }


def _meta(name: str, pid: int, tid: int, value: object, key: str = "name") -> dict[str, Any]:
    return {"name": name, "ph": "M", "pid": pid, "tid": tid, "ts": 0, "args": {key: value}}
