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
    except BrokenPipeError:
        return _reader_gone()
    except tuple(cls for cls, _, _ in EXIT_CODES) as e:
        return _fail_with(e)


def run() -> None:
    """The `shardmill` command (and `python -m shardmill`): `main`, then an exit that skips the
    interpreter's teardown, tens of milliseconds of module cleanup that a one-shot query has no
    use for (every role closes its own sockets and files before `main` returns). Logs and
    output are flushed first."""
    code = main()
    logging.shutdown()
    with contextlib.suppress(OSError, ValueError):
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # `shardmill jobs --json | head -1`: as in `main`
            code = code or _reader_gone()
        sys.stderr.flush()
    os._exit(code)


def _reader_gone() -> int:
    """The reader of stdout went away (`shardmill watch JOB --json | head -1`): nothing more to
    say, and no traceback. As Python's docs advise, stdout points at devnull from here on, so
    that no later flush (the one at exit) fails again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return exitcodes.ERROR  # the code Python itself exits with on a broken pipe


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
