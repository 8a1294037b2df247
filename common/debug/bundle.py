"""A failed attempt's replay bundle: one msgpack file in the state dir, beside its job.

The master writes it when the failure arrives, from what it sent (the task as the worker
received it: its header, by-value arguments and NumPy frames as bytes) and what the failure
report carries (traceback, output, the code's file hash, the hash of a dataset shard's bytes).
Safe to load: msgpack and bytes, no pickle. Pruned with its job.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from shardmill.errors import ReplayError
from shardmill.wire.protocol import ErrorInfo

DIR = "replay"  # under the state dir: DIR/JOB/SHARD-ATTEMPT.msgpack
FORMAT = 1
STATE_DIR_ENV = "SHARDMILL_MASTER_STATE_DIR"
REPLAYABLE = frozenset({"error", "bad_input", "crash", "timeout"})  # the task's own doing


@dataclass(frozen=True)
class Bundle:
    """What `shardmill replay` needs to run one attempt again."""

    job_id: str
    shard: int
    attempt: int
    worker: str
    function: str  # "pkg.module:function" of a map job, else the op
    spec: dict[str, Any]  # the job spec (JSON): the settings that shaped the call
    task: dict[str, Any]  # the Task as the worker received it, its arrays apart
    arrays: list[bytes]
    error: ErrorInfo
    written_at: float = field(default_factory=time.time)
    dropped: int = 0  # argument bytes not kept: above the master's replay_bundle_bytes

    def pack(self) -> bytes:
        fields = {**self.__dict__, "error": self.error.model_dump(mode="json")}
        return bytes(msgpack.packb({"format": FORMAT, **fields}, use_bin_type=True))

    @classmethod
    def unpack(cls, blob: bytes) -> Bundle:
        raw = msgpack.unpackb(blob, raw=False)
        if raw.pop("format", None) != FORMAT:
            raise ValueError("not a replay bundle of this shardmill version")
        raw["error"] = ErrorInfo.model_validate(raw["error"])
        return cls(**raw)


def trimmed(bundle: Bundle, cap: int) -> Bundle:
    """The bundle within `cap` bytes of arguments: above it they are dropped, and said so."""
    size = len(bundle.task.get("payload", b"")) + sum(len(a) for a in bundle.arrays)
    if size <= cap:
        return bundle
    task = {**bundle.task, "payload": b""}
    return Bundle(**{**bundle.__dict__, "task": task, "arrays": [], "dropped": size})


def path_of(state_dir: Path, job_id: str, shard: int, attempt: int) -> Path:
    return state_dir / DIR / job_id / f"{shard}-{attempt}.msgpack"


def write(state_dir: Path, bundle: Bundle) -> Path:
    """Written whole or not at all (a temporary file renamed), readable by this user only."""
    path = path_of(state_dir, bundle.job_id, bundle.shard, bundle.attempt)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(bundle.pack())
    os.replace(tmp, path)
    return path


def remove(state_dir: Path, job_ids: Sequence[str]) -> None:
    """A pruned job's bundles go with it."""
    for job_id in job_ids:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(state_dir / DIR / job_id)


def load(
    job_id: str, shard: int, *, attempt: int | None = None, state_dir: str | Path | None = None
) -> Bundle:
    """The attempt's bundle (default: the shard's latest failed attempt), from the state dir
    named or in $SHARDMILL_MASTER_STATE_DIR."""
    where = state_dir or os.environ.get(STATE_DIR_ENV)
    if not where:
        raise ReplayError(
            "replay reads the master's state dir: pass --state-dir DIR (state_dir=...) or set "
            f"{STATE_DIR_ENV}, as the master was started with"
        )
    return read(Path(where), job_id, shard, attempt)


def read(state_dir: Path, job_id: str, shard: int, attempt: int | None = None) -> Bundle:
    """The bundle of that attempt (default: the shard's latest failed one); ReplayError names
    what is missing and what to do."""
    folder = state_dir / DIR / job_id
    if attempt is None:
        found = sorted(
            (int(p.stem.split("-")[1]) for p in folder.glob(f"{shard}-*.msgpack")), reverse=True
        )
        if not found:
            raise ReplayError(_none_for(state_dir, job_id, shard, folder))
        attempt = found[0]
    path = path_of(state_dir, job_id, shard, attempt)
    try:
        return Bundle.unpack(path.read_bytes())
    except FileNotFoundError:
        raise ReplayError(
            f"no replay bundle for job {job_id} shard {shard} attempt {attempt} in {state_dir}; "
            f"`shardmill logs {job_id} {shard}` lists the shard's attempts"
        ) from None
    except (OSError, ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
        raise ReplayError(f"replay bundle {path} cannot be read: {e}") from e


def _none_for(state_dir: Path, job_id: str, shard: int, folder: Path) -> str:
    if not folder.is_dir():
        return (
            f"no replay bundles for job {job_id} in {state_dir}: check the job id and that "
            "this is the master's --state-dir (bundles are written only with one, and are "
            "pruned with their job)"
        )
    return f"job {job_id} shard {shard} has no failed attempt with a replay bundle"
