"""`@shardmill.task`: lets clients call a function by name (`module:function`) that a worker's
module imports from elsewhere. A function defined in the module itself, or named in its
`__all__`, needs no mark; anything else the module happens to import (`from subprocess import
run`) is refused, so importing a name never hands it to every client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
MARK = "__shardmill_task__"


def task(fn: F) -> F:
    """Mark `fn` as callable by clients through any module that imports it."""
    setattr(fn, MARK, True)
    return fn


def exported(module: Any, name: str, obj: Any) -> bool:
    """Whether clients may call `obj`, found as `name` in `module`."""
    return (
        getattr(obj, "__module__", None) == module.__name__
        or name in getattr(module, "__all__", ())
        or bool(getattr(obj, MARK, False))
    )
