"""What a failed attempt ran and read, told apart from later versions: its module's file hash
and a dataset shard's bytes hash. Worked out only when an attempt fails, never on the way of
a successful one; the worker's child and `shardmill replay` compute them alike."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np

from shardmill.wire.protocol import ErrorInfo, Task
from shardmill.wire.spec import CsvSource, Descriptor, MapChunk, NpySource, RowRange, ScanShard

_CHUNK = 1 << 20


def code_module(task: Task) -> str:
    """The module of the code a task runs: its function's, a user op's, or shardmill's."""
    ref = task.descriptor.function if isinstance(task.descriptor, MapChunk) else task.op
    return ref.partition(":")[0] if ":" in ref else "shardmill"


def code_ref(module: str) -> dict[str, str]:
    """The module as this process imported it: its file, the file's hash, its version."""
    mod = sys.modules.get(module)
    file = (getattr(mod, "__file__", None) or "") if mod is not None else ""
    return {
        "code_file": file,
        "code_sha256": file_sha256(Path(file)) if file else "",
        "code_version": str(getattr(mod, "__version__", "") or ""),
    }


def file_sha256(path: Path) -> str:
    """The file's hash; "" when it cannot be read (gone, a zip import)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError:
        return ""
    return h.hexdigest()


def input_sha256(desc: Descriptor) -> str:
    """The hash of a dataset shard's bytes (.npy rows, a CSV byte range); "" for other sources
    and for what cannot be read."""
    if isinstance(desc, RowRange):
        return _npy_sha256([(desc.path, desc.start, desc.stop)])
    if not isinstance(desc, ScanShard):
        return ""
    src = desc.source
    if isinstance(src, NpySource):
        return _npy_sha256([(p.path, p.start, p.stop) for p in src.pieces])
    if isinstance(src, CsvSource):
        return _range_sha256(src.path, src.start, src.stop)
    return ""


def _npy_sha256(pieces: list[tuple[str, int, int]]) -> str:
    h = hashlib.sha256()
    try:
        for path, start, stop in pieces:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            step = max(1, _CHUNK // max(1, arr[:1].nbytes))
            for lo in range(start, stop, step):
                h.update(np.ascontiguousarray(arr[lo : min(stop, lo + step)]).tobytes())
    except (OSError, ValueError):
        return ""
    return h.hexdigest()


def _range_sha256(path: str, start: int, stop: int) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            f.seek(start)
            left = stop - start
            while left > 0 and (chunk := f.read(min(_CHUNK, left))):
                h.update(chunk)
                left -= len(chunk)
    except OSError:
        return ""
    return h.hexdigest()


def traced(err: ErrorInfo, task: Task) -> ErrorInfo:
    """A task's failure with what it ran and read, for its replay bundle."""
    code = code_ref(code_module(task))
    return err.model_copy(update={**code, "input_sha256": input_sha256(task.descriptor)})


def changes(error: ErrorInfo, task: Task) -> list[str]:
    """What differs from a failed attempt's run, one line each: its code, its input bytes."""
    notes = []
    module = code_module(task)
    spec = importlib.util.find_spec(module) if module != "shardmill" else None
    now_file = spec.origin if spec is not None and spec.origin else ""
    if error.code_sha256 and now_file:
        now = file_sha256(Path(now_file))
        if now != error.code_sha256:
            notes.append(
                f"note: module {module} changed since the attempt ({error.code_file} had "
                f"sha256 {error.code_sha256[:12]}; {now_file} has {now[:12] or 'none'}): "
                "replaying the code as it is now"
            )
    was = error.input_sha256
    if was and (now := input_sha256(task.descriptor)) != was:
        notes.append(
            f"note: the shard's input bytes changed since the attempt (sha256 {was[:12]} then, "
            f"{now[:12] or 'unreadable'} now)"
        )
    return notes
