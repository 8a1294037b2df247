"""One exception hierarchy for everything shardmill raises on purpose, and `Failed`: what a map
job run with `allow_failures` returns in place of a lost item's value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ShardmillError(Exception):
    """Root of every error shardmill raises on purpose."""


class ProtocolError(ShardmillError):
    """Raised when a message cannot be decoded or validated: garbage, wrong version, bad arrays."""


class VersionMismatch(ProtocolError):
    """Raised when a peer speaks another protocol major version than ours."""


class SharedMemoryError(ProtocolError):
    """Raised when a shared-memory segment named in a message cannot be used (see wire/shm.py)."""


class ConfigError(ShardmillError):
    """Raised when settings or command-line flags are invalid or contradict each other."""


class HandshakeRefused(ConfigError):
    """Raised when the master refuses this peer's CURVE handshake: a key it does not know, or one
    side with keys and the other --insecure. The message names which and the fix."""


class JobSpecError(ShardmillError):
    """Raised when a job spec is rejected at submit: names the field and the reason."""


class ReplayError(ShardmillError):
    """Raised by `shardmill replay` and `Client.replay` when an attempt's replay bundle is
    missing, unreadable or lacks its arguments: the message names the attempt and the fix."""


class MasterUnreachable(ShardmillError):
    """Raised by a client when the master does not answer within the connect timeout."""


class JobTimeout(ShardmillError, TimeoutError):
    """Raised by `Job.result(timeout=...)` when the job has not finished in time."""


class JobFailed(ShardmillError):
    """Raised by `Job.result()` when the job failed; the message says why and what to do next."""


class JobCancelled(JobFailed):
    """Raised by `Job.result()` when the job was cancelled."""


class RemoteError(JobFailed):
    """Raised when user code raised on a worker: carries the remote type, message and traceback."""

    def __init__(
        self,
        message: str,
        *,
        remote_type: str = "",
        remote_message: str = "",
        remote_traceback: str = "",
        shard: int | None = None,
        worker: str = "",
    ) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.shard = shard
        self.worker = worker


class UnknownFunction(ShardmillError):
    """Raised on a worker when a task names a function outside the modules it was started with."""


class BadInput(ShardmillError):
    """Raised on a worker when a shard's data cannot be read or parsed; names file, row, field."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable  # True when another worker might read it (a missing mount)


class PipelineFailed(ShardmillError):
    """Raised by a pipeline's `result()` when a stage failed for good (names stage, shard and
    the error), and on the master when a stage cannot be planned or submitted."""


class FetchFailed(ShardmillError):
    """Raised in a pipeline's reduce shard when a map output it needs cannot be fetched from
    the worker that holds it (gone, or restarted without it); the message names each holder as
    `[holder=ADDRESS]`, and the pipeline recomputes what that holder held."""


class InvalidTransition(ShardmillError):
    """Raised when the master's state machine is asked for a transition its table forbids."""


class StateDirError(ShardmillError):
    """Raised when the state directory is locked, corrupt, foreign, newer or not writable."""


class ElectionError(ShardmillError):
    """The arbiter (etcd) cannot be reached or answers nonsense: a primary that cannot renew
    its lease stops acting (it may have been replaced), a standby keeps waiting."""


class SteppedDown(ShardmillError):
    """This master was primary, and found it was replaced (its lease is gone, or someone
    speaks for a higher epoch): it stops without dispatching, merging or answering."""


class MessageTooLarge(ShardmillError):
    """Raised before sending a request larger than the configured message limit."""


class ServerError(ShardmillError):
    """Raised by a client when the master answered a request with an error reply."""

    def __init__(self, message: str, *, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


def server_error(code: str, message: str) -> ShardmillError:
    """The exception a client raises for the master's error reply of `code`."""
    if code == "bad_spec":
        return JobSpecError(message)
    if code == "protocol":
        return ProtocolError(f"the master refused the request: {message}")
    return ServerError(message, code=code)


# ---- a lost item under allow_failures ---------------------------------------------------


@dataclass(frozen=True)
class Failed:
    """The item's shard failed for good under `allow_failures`; no value came back.

    Tell it apart with `isinstance(value, shardmill.Failed)` (a task may itself return None).
    It is falsy, so `[v for v in results if v]` drops it too. The errors of each attempt:
    `job.status(shards=True).shards[shard].history`, or `shardmill why JOB SHARD`."""

    job_id: str
    shard: int

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return (
            f"failed: job {self.job_id} shard {self.shard} "
            f"(`shardmill why {self.job_id} {self.shard}` tells why)"
        )

    def to_json(self) -> dict[str, Any]:
        return {"failed": True, "job_id": self.job_id, "shard": self.shard}


def mark_failed(job_id: str, chunks: list[Any], missing: list[int]) -> list[Any]:
    """A map job's items in input order, one chunk per shard; a missing shard's are `Failed`."""
    lost = set(missing)
    return [
        Failed(job_id, shard) if shard in lost else value
        for shard, chunk in enumerate(chunks)
        for value in (chunk or [])
    ]
