"""Task functions the test workers import with `--import sm_tasks`."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def square(x: int) -> int:
    return x * x


def add(a: Any, b: Any) -> Any:
    return a + b


def noop() -> None:
    return None


def scale(arr: np.ndarray, k: float) -> np.ndarray:
    return arr * k


def describe(arr: np.ndarray) -> dict[str, Any]:
    return {"shape": list(arr.shape), "dtype": arr.dtype.str, "sum": float(arr.sum())}


def boom(x: int) -> int:
    raise ValueError(f"boom on {x}")


def returns_object() -> Any:
    return object()


def _record(log_dir: str, key: str) -> int:
    """Append one line per execution; returns how many times `key` has run (this included)."""
    path = Path(log_dir) / f"{key}.runs"
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return len(path.read_text().splitlines())


def flaky(log_dir: str, key: str, x: int) -> int:
    """Raises on its first execution only."""
    if _record(log_dir, key) == 1:
        raise RuntimeError(f"first attempt of {key} fails")
    return x * 10


def counted(log_dir: str, key: str, x: int, delay: float = 0.0) -> int:
    _record(log_dir, key)
    if delay:
        time.sleep(delay)
    return x + 1


def exit_first(log_dir: str, key: str, code: int) -> int:
    """Calls os._exit(code) on its first execution only."""
    if _record(log_dir, key) == 1:
        os._exit(code)
    return code


def segfault_first(log_dir: str, key: str) -> str:
    if _record(log_dir, key) == 1:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return "survived"


def kill_self_first(log_dir: str, key: str) -> str:
    if _record(log_dir, key) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def sleep_first(log_dir: str, key: str, seconds: float) -> str:
    if _record(log_dir, key) == 1:
        time.sleep(seconds)
    return "quick"


def fault_with_queue(log_dir: str, key: str, x: int, at: int, fault: str) -> int:
    """At item `at`, first run only: wait until more tasks sit in this child's pipe behind it
    (its stdin, fd 0, is readable), note that, then die (`exit`) or hang (`hang`)."""
    if x == at and _record(log_dir, key) == 1:
        deadline = time.monotonic() + 20
        while not select.select([0], [], [], 0.05)[0] and time.monotonic() < deadline:
            pass
        if select.select([0], [], [], 0)[0]:
            Path(log_dir, "queued-behind").touch()
        if fault == "exit":
            os._exit(3)
        time.sleep(60)
    return x + 1


def die_idle(log_dir: str, seconds: float) -> int:
    """Return at once, and make this child exit `seconds` later, idle (a leak, an OOM kill)."""
    Path(log_dir, f"idle-{os.getpid()}").touch()
    threading.Timer(seconds, os._exit, (0,)).start()
    return os.getpid()


def hold_gil(seconds: float) -> int:
    """A pure-Python loop that never releases the GIL voluntarily."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n > 0


def wait_for_file(path: str, timeout: float = 30.0) -> str:
    """Blocks until `path` exists (a test releases it), polling; returns the pid."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return str(os.getpid())


def pid_and_wait(flag: str, x: int) -> list[int]:
    wait_for_file(flag)
    return [os.getpid(), x]


def block_first(log_dir: str, key: str, x: int) -> int:
    """First execution writes its pid to KEY.pid and blocks; later executions return at once."""
    if _record(log_dir, key) == 1:
        Path(log_dir, f"{key}.pid").write_text(str(os.getpid()))
        time.sleep(120)
    return x * 2


def slow(log_dir: str, key: str, x: int, seconds: float) -> int:
    """Records each execution, writes its pid, then sleeps: a shard that takes a while."""
    _record(log_dir, key)
    Path(log_dir, f"{key}.pid").write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(log_dir, f"{key}.done").touch()
    return x * 3


def always_fails(x: int) -> int:
    raise KeyError(f"no such thing as {x}")


def nap(x: int, seconds: float) -> int:
    """Sleeps, then returns x*3: a slow shard with no side effects (the Docker tests use it)."""
    time.sleep(seconds)
    return x * 3


def nap_after_flag(x: int, seconds: float, flag: str) -> int:
    """Waits for `flag` to exist (the test's go), then sleeps, then x*3: slow shards held back."""
    wait_for_file(flag, timeout=60)
    return nap(x, seconds)


def backing(arr: np.ndarray) -> list[Any]:
    """What holds the argument's bytes in the child ("mmap" when it came by shared memory)."""
    base: Any = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    holder = base.obj if isinstance(base, memoryview) else base
    return [type(holder).__name__, float(arr.sum())]


def sum_after(arr: np.ndarray, flag: str) -> float:
    """The argument's sum, once the test creates `flag`."""
    wait_for_file(flag)
    return float(arr.sum())


def stall_on(x: int, seconds: float, slow_file: str) -> int:
    """Sleeps `seconds`, or 60 s on the worker named in `slow_file` (a straggler), then x*3."""
    slow = Path(slow_file).read_text().strip()
    time.sleep(60.0 if slow and os.environ.get("SHARDMILL_WORKER_ID") == slow else seconds)
    return x * 3


def chatty(x: int) -> int:
    """Prints to stdout and stderr, then returns."""
    print(f"hello from {x}")
    os.write(2, f"raw stderr {x}\n".encode())
    return x


def print_then_raise(x: int) -> int:
    """Prints a line, then fails: its story shows both."""
    print(f"computing shard input {x}")
    raise ValueError(f"bad value {x}")


def print_then_kill(x: int) -> int:
    """Prints a line, then its process dies of SIGKILL mid-shard."""
    print(f"about to die on {x}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def print_and_wait(x: int, flag: str) -> int:
    """Prints a line, waits for `flag` to exist (the test's go), prints another."""
    print(f"waiting {x}", flush=True)
    wait_for_file(flag)
    print(f"done {x}", flush=True)
    return x


def sum_after_flag(x: int, flag: str) -> int:
    """x * 10, once `flag` exists (at once when it is empty): a shard the test holds back."""
    if flag:
        wait_for_file(flag, timeout=60)
    return x * 10


def nested_pids(n: int) -> tuple[int, list[int]]:
    """A task that opens its own joblib Parallel on "shardmill": where did its calls run?"""
    import joblib

    with joblib.parallel_config(backend="shardmill"):
        inner = joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(n))
    return os.getpid(), inner
