"""The function registry: resolve "pkg.mod:function" among the modules a process was started
with, and only those. Built where a role starts and handed to whoever resolves names (the
worker's children for tasks, the master for user ops' combine and finalize); never a global."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any

from shardmill.errors import UnknownFunction
from shardmill.task import exported


def missing_modules(names: list[str]) -> list[str]:
    """Modules that cannot be found on sys.path (checked without running them)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def offers(module: ModuleType, wanted: str) -> str:
    """What a module lets clients call, the closest to `wanted` first named."""
    names = sorted(
        name
        for name, obj in vars(module).items()
        if callable(obj) and not name.startswith("_") and exported(module, name, obj)
    )
    if not names:
        return "it offers no functions clients may call"
    close = difflib.get_close_matches(wanted, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return f"{hint}it offers: {shown}"


class Registry:
    """The modules named at start, imported once; functions are looked up by reference."""

    def __init__(self, modules: list[str], *, worker: str = "") -> None:
        self.worker = worker
        self.modules: dict[str, ModuleType] = {}
        self.broken: dict[str, str] = {}
        for name in modules:
            try:
                self.modules[name] = importlib.import_module(name)
            except Exception:  # user code: keep the worker up and report it per task
                self.broken[name] = traceback.format_exc()

    def resolve(self, ref: str) -> Callable[..., Any]:
        module_name, _, func_name = ref.partition(":")
        if module_name in self.broken:
            raise UnknownFunction(
                f"function {ref!r}: module {module_name!r} failed to import on worker "
                f"{self.worker}:\n{self.broken[module_name]}"
            )
        module = self.modules.get(module_name)
        if module is None:
            started = ", ".join(sorted(self.modules)) or "none"
            raise UnknownFunction(
                f"function {ref!r}: module {module_name!r} is not imported on worker "
                f"{self.worker} (imports: {started}); start the worker with "
                f"`shardmill worker --import {module_name}`"
            )
        func = getattr(module, func_name, None)
        if not callable(func):
            raise UnknownFunction(
                f"function {ref!r}: module {module_name!r} has no function {func_name!r} on "
                f"worker {self.worker}; {offers(module, func_name)}; check the name, or "
                "restart the workers after an update"
            )
        if func_name.startswith("_") or not exported(module, func_name, func):
            where = getattr(func, "__module__", None) or type(func).__name__
            raise UnknownFunction(
                f"function {ref!r}: {func_name!r} is not defined in module {module_name!r} "
                f"(it comes from {where}); clients may call only a module's own functions, "
                f"those in its __all__, or ones marked @shardmill.task"
            )
        return func  # type: ignore[no-any-return]


NO_MODULES = Registry([])  # for built-in ops only: every user-op name is refused with the fix
