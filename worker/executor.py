"""A child process: reads tasks from stdin, runs them, writes results to its protocol pipe.

Run by the agent as `python -m shardmill.worker.executor WORKER MODULE...`. File descriptor 1 is
pointed at stderr first, so a task that prints cannot corrupt the protocol stream.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from typing import Any, BinaryIO

import numpy as np

from shardmill.debug.provenance import traced
from shardmill.errors import BadInput, FetchFailed, ProtocolError, UnknownFunction
from shardmill.ops.calls import CALL_FUNCTIONS
from shardmill.ops.registry import Registry
from shardmill.wire import shm
from shardmill.wire.codec import Buffer, decode, encode, pack_value, unpack_value
from shardmill.wire.protocol import ErrorInfo, ShardAttempt, ShardDone, ShardFailed, Task
from shardmill.wire.spec import STAGE_FUNCTION, MapChunk, NpyPiece, NpySource, RowRange, ScanShard
from shardmill.worker.calls import run_calls
from shardmill.worker.output import Capture
from shardmill.worker.pipes import read_frames, write_frames
from shardmill.worker.scan import resolve_op, run_scan


def _die_with_parent() -> None:
    # Linux: if the agent is SIGKILLed, its children die with it instead of computing on
    # as orphans (the master re-runs their shards elsewhere anyway).
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the agent died before prctl took effect
            os._exit(1)


def main(argv: list[str]) -> int:
    _die_with_parent()
    proto_out: BinaryIO = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker, modules = argv[0], argv[1:]
    os.environ["SHARDMILL_WORKER_ID"] = worker  # named in what it fetches by URL (data/remote)
    registry = Registry(modules, worker=worker)
    capture = Capture.from_env()
    if capture is not None:
        capture.take()  # what the imports printed: on the worker's stderr, in no shard's story
    write_frames(proto_out, [])  # ready: imports done, reading tasks from now on
    stdin: BinaryIO = os.fdopen(0, "rb", buffering=0)
    while True:
        frames = read_frames(stdin)
        if frames is None:
            return 0
        decoded = decode(frames)
        task = decoded.msg
        if not isinstance(task, Task):
            raise ProtocolError(f"child expected a task, got {task.kind!r}")
        reply, arrays = run_task(task, decoded.arrays, registry)
        if capture is not None and (printed := capture.take()):
            reply = with_output(reply, printed)
        write_frames(proto_out, encode(reply, arrays))


def with_output(reply: ShardDone | ShardFailed, printed: str) -> ShardDone | ShardFailed:
    """The reply with what its task printed: a failure carries it in its error."""
    if isinstance(reply, ShardFailed):
        error = reply.error.model_copy(update={"output": printed})
        return reply.model_copy(update={"error": error})
    return reply.model_copy(update={"output": printed})


def run_task(
    task: Task, arrays: list[Buffer], registry: Registry
) -> tuple[ShardDone | ShardFailed, list[np.ndarray]]:
    """Run one shard, or a batch of them; any failure comes back as data, never as an exception."""
    start = time.monotonic()
    if task.more:
        return _run_batch(task, registry, start)
    value = _guarded(task, arrays, registry, start)
    if isinstance(value, ShardFailed):
        return value, []
    return _done(task, value, start, [])


def _guarded(task: Task, arrays: list[Buffer], registry: Registry, start: float) -> Any:
    """The shard's value, or a ShardFailed that says why."""
    try:
        return execute(task, arrays, registry)
    except UnknownFunction as e:
        err = ErrorInfo(
            kind="unknown_function", type="UnknownFunction", message=str(e), retryable=False
        )
        return _failed(task, start, err)
    except FetchFailed as e:  # a peer's map output is gone: the pipeline recomputes it
        err = ErrorInfo(kind="error", type=_qualname(e), message=str(e), retryable=False)
        return _failed(task, start, err)
    except BadInput as e:  # names the file, row and field; retrying cannot fix bad data
        err = ErrorInfo(kind="bad_input", type="BadInput", message=str(e), retryable=e.retryable)
        return _failed(task, start, traced(err, task))
    except (Exception, SystemExit) as e:  # user code: all it raises is reported as data
        return _failed(task, start, traced(_user_error(e), task))


def _done(
    task: Task, value: Any, start: float, more: list[ShardAttempt]
) -> tuple[ShardDone | ShardFailed, list[np.ndarray]]:
    try:
        packed = pack_value(value)
    except (TypeError, ValueError, OverflowError) as e:
        what = getattr(task.descriptor, "function", task.op)
        err = ErrorInfo(
            kind="error",
            type=_qualname(e),
            retryable=False,
            message=f"{what} returned a value that cannot be sent: {e}",
        )
        return _failed(task, start, err).model_copy(update={"more": more}), []
    done = ShardDone(
        job_id=task.job_id,
        shard=task.shard,
        attempt=task.attempt,
        duration=time.monotonic() - start,
        payload=packed.data,
        more=more,
        finished=time.time(),
    )
    return done, packed.arrays


def _run_batch(
    task: Task, registry: Registry, start: float
) -> tuple[ShardDone | ShardFailed, list[np.ndarray]]:
    """Shards of one dataset op, one after the other, folded into one partial with the op's
    own `combine` (as run_scan folds a shard's blocks). A failing shard is reported with the
    batch's other shards named: the master charges it alone and runs the others again."""
    members = [task] + [
        task.model_copy(
            update={"shard": m.shard, "attempt": m.attempt, "descriptor": m.descriptor, "more": []}
        )
        for m in task.more
    ]
    others = task.more_attempts()
    acc: Any = None
    combine = None
    for sub in members:
        value = _guarded(sub, [], registry, start)
        if not isinstance(value, ShardFailed) and acc is not None:
            try:
                combine = combine or resolve_op(task.op, registry).combine  # once a batch
                value = combine(acc, value)
            except (Exception, SystemExit) as e:
                value = _failed(sub, start, _user_error(e))
        if isinstance(value, ShardFailed):
            rest = [ShardAttempt(shard=task.shard, attempt=task.attempt), *others]
            rest = [r for r in rest if r.shard != sub.shard]
            return value.model_copy(update={"more": rest}), []
        acc = value
    return _done(task, acc, start, others)


def _user_error(e: BaseException) -> ErrorInfo:
    return ErrorInfo(
        kind="error", type=_qualname(e), message=str(e), traceback=traceback.format_exc()
    )


_MAPS = shm.WorkerMaps()


def execute(task: Task, arrays: list[Buffer], registry: Registry) -> Any:
    """A shard's value; what it raises propagates (a replay's debugger stops there)."""
    if task.shm:  # big inputs the master left in shared memory: map this shard's pages
        arrays = _MAPS.open(task.shm, arrays)
    desc = task.descriptor
    if isinstance(desc, MapChunk):
        args_list = unpack_value(task.payload, arrays)
        if desc.function == STAGE_FUNCTION:  # a pipeline's stage: built in, like the ops
            from shardmill.pipeline.stage import run_stage  # only children that run one

            return [run_stage(*args, registry=registry) for args in args_list]
        if desc.function in CALL_FUNCTIONS:  # shardmill.futures and joblib: outcomes as data
            return run_calls(desc.function, args_list, registry)
        func = registry.resolve(desc.function)
        return [func(*args) for args in args_list]
    if isinstance(desc, RowRange):  # a job checkpointed before ScanShard existed
        desc = ScanShard(
            source=NpySource(pieces=[NpyPiece(path=desc.path, start=desc.start, stop=desc.stop)]),
            first_row=desc.start,
        )
        task = task.model_copy(update={"descriptor": desc})
    return run_scan(task, arrays, registry)


def _failed(task: Task, start: float, err: ErrorInfo) -> ShardFailed:
    return ShardFailed(
        job_id=task.job_id,
        shard=task.shard,
        attempt=task.attempt,
        duration=time.monotonic() - start,
        error=err,
    )


def _qualname(e: BaseException) -> str:
    cls = type(e)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
