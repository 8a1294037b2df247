"""How a failure is told and retried: backoff before a retry, and the message that ends a job."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from shardmill.master.brain.attempt import Attempt
from shardmill.master.brain.model import Job, Shard, Timing
from shardmill.wire.protocol import AttemptInfo, ErrorInfo


def lost_error(worker: str, silence: float | None) -> ErrorInfo:
    """The error charged to a shard its worker was running when it was lost: expired after
    `silence` seconds, or (None) disconnected."""
    why = (
        f"worker {worker} stopped answering heartbeats ({silence:.1f} s silent)"
        if silence is not None
        else f"worker {worker} disconnected while running it"
    )
    return ErrorInfo(kind="lost", message=why, worker=worker)


def backoff(timing: Timing, job_id: str, shard: int, attempt: int) -> float:
    """Capped exponential backoff with deterministic jitter in [0.5, 1.5) (keeps `handle` pure)."""
    base = min(timing.retry_backoff_max, timing.retry_backoff * 2.0 ** (attempt - 1))
    jitter = 0.5 + (zlib.crc32(f"{job_id}:{shard}:{attempt}".encode()) % 1000) / 1000
    return min(timing.retry_backoff_max, base * jitter)


def telling_error(history: Sequence[Attempt] | Sequence[AttemptInfo]) -> ErrorInfo | None:
    """The error a failed shard is told by: the latest attempt where the task itself raised
    (its type, message and traceback are what the user must fix), else the latest error.
    A shard that raised and was then lost with its worker fails because of what it raised."""
    errors = [a.error for a in history if a.error is not None]
    raised = [e for e in errors if e.kind == "error"]
    return raised[-1] if raised else (errors[-1] if errors else None)


def failure_message(job: Job, shard: Shard) -> str:
    """A failure that names the shard, the task's own exception when any attempt raised (the
    losses beside it), every attempt's worker and error, and the next step."""
    told = telling_error(shard.history)
    head = (
        f"job {job.job_id} failed: shard {shard.index} of {len(job.shards)} failed "
        f"after {len(shard.history)} attempt(s) (max_attempts={job.spec.max_attempts})"
    )
    if told is not None and told.kind == "error":
        head += f": it raised {told.type}: {told.message}".rstrip(": ")
        lost = sum(1 for a in shard.history if a.error is not None and a.error.kind == "lost")
        head += f"; {lost} attempt(s) lost with their worker" if lost else ""
    lines = [head]
    for a in shard.history:
        err = a.error
        detail = "" if err is None else f"{err.kind}: {err.type} {err.message}".strip()
        if err is not None and err.signal:
            detail += f" (signal {err.signal})"
        elif err is not None and err.exit_code is not None:
            detail += f" (exit code {err.exit_code})"
        lines.append(f"  attempt {a.number} on worker {a.worker}: {detail}")
    if told is not None and told.traceback:
        which = "the attempt that raised" if told.kind == "error" else "last attempt"
        lines.append(f"remote traceback ({which}):\n" + told.traceback.rstrip())
    lines.append(next_step(told))
    return "\n".join(lines)


def next_step(err: ErrorInfo | None) -> str:
    if err is None:
        return "next step: inspect it with `shardmill why JOB SHARD`"
    if err.kind == "unknown_function" and "is not imported" in err.message:
        return "next step: start the workers with the module: `shardmill worker --import MOD`"
    if err.kind == "unknown_function":
        return "next step: call a function the module offers (named above) and resubmit"
    if err.kind == "timeout":
        return "next step: raise the job's task_timeout or use more, smaller shards"
    if err.kind == "bad_input" and not err.retryable:
        return (
            "next step: fix the input named above (file, line, field) and resubmit; bad input "
            "is not retried (another attempt would meet the same input)"
        )
    if err.kind == "bad_input":
        return "next step: fix the input named above (file, line, field) and resubmit"
    if err.kind in ("crash", "lost"):
        return "next step: check the worker's logs and memory; the task may crash its process"
    return "next step: fix the error in the task code (see the traceback) and resubmit"
