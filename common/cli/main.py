"""Running the `shardmill` command: parse, call the handler, turn errors into named exit codes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from shardmill import exitcodes
from shardmill.cli.parser import build_parser
from shardmill.errors import (
    ConfigError,
    JobCancelled,
    JobFailed,
    JobSpecError,
    JobTimeout,
    MasterUnreachable,
    ServerError,
    StateDirError,
)

Handler = Callable[[argparse.Namespace], int]
# The first matching class wins: subclasses come before their bases.
EXIT_CODES: list[tuple[type[BaseException], int, str]] = [
    (ConfigError, exitcodes.CONFIG, "invalid settings: "),
    (ValidationError, exitcodes.CONFIG, "invalid settings: "),
    (MasterUnreachable, exitcodes.UNREACHABLE, ""),
    (JobSpecError, exitcodes.BAD_SPEC, "job rejected: "),
    (JobTimeout, exitcodes.TIMEOUT, ""),
    (JobCancelled, exitcodes.CANCELLED, ""),
    (JobFailed, exitcodes.JOB_FAILED, ""),
    (StateDirError, exitcodes.STATE, ""),
    (ServerError, exitcodes.ERROR, ""),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return exitcodes.ERROR
    except tuple(cls for cls, _, _ in EXIT_CODES) as e:
        return _fail_with(e)


def run() -> None:
    """The `shardmill` command (and `python -m shardmill`): `main`, then an exit that skips the
    interpreter's teardown, tens of milliseconds of module cleanup that a one-shot query has no
    use for (every role closes its own sockets and files before `main` returns). Logs and
    output are flushed first."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # a closed pipe (`shardmill jobs | head`): nothing more to say
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _fail_with(e: BaseException) -> int:
    _, code, prefix = next(row for row in EXIT_CODES if isinstance(e, row[0]))
    text = prefix + str(e)
    tb = getattr(e, "remote_traceback", "")
    if tb and tb not in text:
        text += "\nremote traceback:\n" + tb
    if isinstance(e, ServerError) and e.code == "unknown_job":
        code = exitcodes.NOT_FOUND
    return _fail(text, code)


def _fail(message: str, code: int) -> int:
    print(f"shardmill: {message}", file=sys.stderr)
    return code
