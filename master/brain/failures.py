"""How a failure is told and retried: backoff before a retry, and the message that ends a job."""

from __future__ import annotations

import zlib

from shardmill.master.brain.model import Job, Shard, Timing
from shardmill.wire.protocol import ErrorInfo


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


def failure_message(job: Job, shard: Shard) -> str:
    """A failure that names the shard, every attempt's worker and error, and the next step."""
    lines = [
        f"job {job.job_id} failed: shard {shard.index} of {len(job.shards)} failed "
        f"after {len(shard.history)} attempt(s) (max_attempts={job.spec.max_attempts})"
    ]
    for a in shard.history:
        err = a.error
        detail = "" if err is None else f"{err.kind}: {err.type} {err.message}".strip()
        if err is not None and err.signal:
            detail += f" (signal {err.signal})"
        elif err is not None and err.exit_code is not None:
            detail += f" (exit code {err.exit_code})"
        lines.append(f"  attempt {a.number} on worker {a.worker}: {detail}")
    last = shard.history[-1].error if shard.history else None
    if last is not None and last.traceback:
        lines.append("remote traceback (last attempt):\n" + last.traceback.rstrip())
    lines.append(next_step(last))
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
    if err.kind == "bad_input":
        return "next step: fix the input named above (file, line, field) and resubmit"
    if err.kind in ("crash", "lost"):
        return "next step: check the worker's logs and memory; the task may crash its process"
    return "next step: fix the error in the task code (see the traceback) and resubmit"
