"""Python calls as map items: a function sent by name, or pickled where both ends allow it.

A module-level function crosses as its name (`fn.__module__` and `__qualname__`), resolved on
the worker under the registry's rules: `BY_NAME` items are `(ref, args, kwargs)`. Lambdas,
closures and objects need pickling: `PICKLED` items are one cloudpickle blob of
`(fn, args, kwargs)`, run only by workers started with `--allow-pickle` for clients whose key
the master lists in KEYS/pickle/; the master forwards the bytes and never unpickles them.
Each call's outcome comes back as data, `(OK, value)` or `(RAISED, ...)`, so one call that
raises fails its own future only, and is never retried as a crash would be.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardmill.errors import RemoteError, ShardmillError

BY_NAME = "shardmill.ops.calls:by_name"
PICKLED = "shardmill.ops.calls:pickled"
CALL_FUNCTIONS = frozenset({BY_NAME, PICKLED})
OK, RAISED, PICKLED_OK, PICKLED_RAISED = 0, 1, 2, 3
PICKLE_SWITCH = (
    "pickled calls are off: allow them on trusted clusters only, with `shardmill worker "
    "--allow-pickle` and the client's key in the master's KEYS/pickle/ (then SIGHUP), "
    "or pass a module-level function the workers import (--import MODULE)"
)


class NeedsPickle(ShardmillError):
    """Raised when a function cannot be sent by name and pickling was not asked for."""


class RemoteTraceback(Exception):
    """The `__cause__` of an exception a call raised on a worker: its traceback there."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def function_ref(fn: Callable[..., Any]) -> str | None:
    """`"module:qualname"` for a module-level function the workers can import; else None."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not inspect.isfunction(fn) and not inspect.isbuiltin(fn):
        return None
    if not module or module == "__main__" or not qualname or "." in qualname or "<" in qualname:
        return None
    return f"{module}:{qualname}"


@dataclass(frozen=True)
class Encoder:
    """Turns calls into map items: by name, or with `pickle` every call pickled."""

    pickle: bool = False

    def function(self, fn: Callable[..., Any]) -> str:
        """The built-in function its items go to: BY_NAME, or PICKLED."""
        if self.pickle:
            return PICKLED
        if function_ref(fn) is None:
            raise NeedsPickle(
                f"{getattr(fn, '__qualname__', fn)!r} is not a module-level function, so it "
                f"cannot be sent by name; pass pickle=True to send it pickled ({PICKLE_SWITCH})"
            )
        return BY_NAME

    def item(
        self, fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[Any, ...]:
        if self.function(fn) == BY_NAME:
            return (function_ref(fn), list(args), dict(kwargs))
        return dumps((fn, tuple(args), dict(kwargs)))


def dumps(obj: Any) -> tuple[bytes, list[np.ndarray]]:
    """cloudpickle's bytes, with large contiguous buffers (NumPy arrays' data) taken out of
    band: they travel as frames, never copied into the pickle."""
    import cloudpickle  # only where pickling was asked for

    buffers: list[pickle.PickleBuffer] = []
    blob = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return blob, [np.frombuffer(b.raw(), dtype=np.uint8) for b in buffers]


def loads(blob: bytes, frames: Sequence[Any]) -> Any:
    """What `dumps` pickled; only where the caller opted in to pickling (it trusts the bytes)."""
    return pickle.loads(blob, buffers=[memoryview(f) for f in frames])


def outcome(value: Any) -> Any:
    """A call's value from its outcome as the worker sent it; what it raised, raised here,
    with the worker's traceback as its `__cause__`."""
    kind = value[0]
    if kind == OK:
        return value[1]
    if kind == PICKLED_OK:
        return loads(value[1], value[2])
    if kind == PICKLED_RAISED:
        error, tb = loads(value[1], value[2]), value[3]
        raise error from RemoteTraceback(tb)
    _, type_name, args, message, tb = value
    raise _rebuilt(type_name, args, message) from RemoteTraceback(tb)


def _rebuilt(type_name: str, args: Any, message: str) -> BaseException:
    """The exception as the worker raised it when its type imports here and takes its
    arguments back; else a RemoteError naming the type."""
    generic = RemoteError(f"{type_name}: {message}", remote_type=type_name, remote_message=message)
    module_name, _, name = type_name.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else builtins
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, Exception) and isinstance(args, list):
            return cls(*args)
    except Exception as e:  # its module or constructor failed here: the generic error says it
        generic.add_note(f"(not rebuilt as {type_name} here: {e})")
    return generic
