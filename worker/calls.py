"""Running Python calls sent by shardmill.futures and shardmill.joblib (see shardmill.ops.calls):
by name under the registry's rules, or unpickled when this worker runs with --allow-pickle."""

from __future__ import annotations

import logging
import os
import traceback
from typing import Any

from shardmill.errors import UnknownFunction
from shardmill.ops.calls import (
    BY_NAME,
    OK,
    PICKLE_SWITCH,
    PICKLED_OK,
    PICKLED_RAISED,
    RAISED,
    dumps,
    loads,
)
from shardmill.ops.registry import Registry
from shardmill.wire.codec import pack_value

log = logging.getLogger(__name__)
ALLOW_PICKLE_ENV = "SHARDMILL_WORKER_ALLOW_PICKLE"  # set by the agent for its children


def allow_pickle(allowed: bool) -> None:
    """The agent's setting, for its children (started afresh or forked) to read."""
    os.environ[ALLOW_PICKLE_ENV] = "1" if allowed else "0"
    if allowed:
        log.warning("pickled calls allowed (--allow-pickle): for trusted clusters only")


def pickle_allowed() -> bool:
    return os.environ.get(ALLOW_PICKLE_ENV, "") == "1"


def run_calls(function: str, items: list[Any], registry: Registry) -> list[Any]:
    """Each item's outcome, in order; what a call raises is an outcome too."""
    if function == BY_NAME:
        return [_by_name(registry, *item) for item in items]
    if not pickle_allowed():
        raise UnknownFunction(f"worker {registry.worker}: {PICKLE_SWITCH}")
    return [_pickled(*item) for item in items]


def _by_name(registry: Registry, ref: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    func = registry.resolve(ref)  # UnknownFunction fails the shard, for good, with the fix
    try:
        value = func(*args, **kwargs)
        pack_value(value)  # a value the codec cannot send is this call's error, not the shard's
    except Exception as e:  # user code: what it raises travels back as data
        args_back = list(e.args) if _packable(e.args) else None
        return (RAISED, type_name(e), args_back, str(e), traceback.format_exc())
    return (OK, value)


def _pickled(blob: bytes, frames: list[Any]) -> Any:
    fn, args, kwargs = loads(blob, frames)
    try:
        return (PICKLED_OK, *dumps(fn(*args, **kwargs)))
    except Exception as e:  # user code: the exception itself travels back, pickled
        tb = traceback.format_exc()
        try:
            return (PICKLED_RAISED, *dumps(e), tb)
        except Exception:  # an exception that does not pickle: its type and text instead
            return (RAISED, type_name(e), None, str(e), tb)


def type_name(e: BaseException) -> str:
    """As `shardmill.ops.calls` imports it back: builtins by their bare name."""
    cls, name = type(e), type(e).__qualname__
    return name if cls.__module__ == "builtins" else f"{cls.__module__}.{name}"


def _packable(value: Any) -> bool:
    try:
        pack_value(list(value))
    except (TypeError, ValueError, OverflowError):
        return False
    return True
