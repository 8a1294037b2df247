"""A child forked from the agent, with the few parts of `subprocess.Popen` the runner uses.

The agent forks its first children before it opens a ZeroMQ context (no libzmq thread or socket
exists yet, the classic safe fork), once it has imported what a child runs: a child then starts
in about a millisecond instead of the ~0.4 s a fresh interpreter spends on its imports (two
children on two cores: most of a local cluster's start). Children that replace a dead one are
started afresh (`python -m shardmill.worker.executor`), as the agent's sockets exist by then.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import BinaryIO

from shardmill.worker.output import ENV


class Forked:
    """`executor.main(argv)` in a forked child, its stdin and stdout as pipes to us."""

    def __init__(self, argv: list[str], output: int, limit: int) -> None:
        """`output`: the slot's output file, the child's fd 1 and 2 (see output.py)."""
        from shardmill.worker import executor  # imported here, before the fork, once

        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (r_in, w_in, r_out, w_out):
                os.close(fd)
            raise
        if pid == 0:  # the child: never returns, whatever happens
            try:
                _child(executor.main, argv, (r_in, w_out), (output, limit))
            finally:
                os._exit(1)
        os.close(r_in)
        os.close(w_out)
        self.pid = pid
        self.returncode: int | None = None
        self.stdin: BinaryIO | None = os.fdopen(w_in, "wb", buffering=0)
        self.stdout: BinaryIO | None = os.fdopen(r_out, "rb", buffering=0)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(["fork"], timeout or 0.0)
            time.sleep(0.005)  # no waitpid with a timeout: poll it
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


def _child(
    main: Callable[[list[str]], int],
    argv: list[str],
    pipes: tuple[int, int],
    output: tuple[int, int],
) -> None:
    code = 1
    try:
        os.dup2(pipes[0], 0)
        os.dup2(pipes[1], 1)
        echo = os.dup(2)  # the agent's stderr: what a task prints is echoed there too
        os.dup2(output[0], 2)
        os.dup2(echo, 3)  # after: the output file may have been fd 3
        os.closerange(4, 1 << 16)  # siblings' pipes too, or they never see EOF
        os.environ[ENV] = f"{output[1]},3"
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        rng = sys.modules.get("numpy.random")
        if rng is not None:  # NumPy 1.x seeds it at import: siblings would draw the same
            rng.seed()
        code = main(argv)
    except BaseException:  # a child must never run on as a copy of the agent
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stderr.flush()
        os._exit(code)
