"""The `shardmill` command: run a master or a worker, submit and inspect jobs, run the demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from shardmill import __version__, exitcodes
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


def setup_logging(role: str, level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {role}[%(process)d] %(name)s: %(message)s",
    )


def build_parser() -> argparse.ArgumentParser:
    from shardmill import cli_commands as c
    from shardmill.cli_spec import add_spec_flags, cmd_plan

    parser = argparse.ArgumentParser(
        prog="shardmill", description="Split a dataset into shards, run them on workers, merge."
    )
    parser.add_argument("--version", action="version", version=f"shardmill {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("master", help="run a master")
    p.add_argument("--host", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, help="worker port (default 5555; 0 picks one)")
    p.add_argument("--client-port", type=int, help="client port (default 5556; 0 picks one)")
    p.add_argument("--heartbeat-interval", type=float, help="seconds (default 1.0)")
    p.add_argument("--heartbeat-liveness", type=int, help="missed beats before expiry (3)")
    p.add_argument(
        "--prefetch-below",
        type=float,
        metavar="SECONDS",
        help="queue shards on workers for jobs whose shards are shorter (default 0.1; 0: never)",
    )
    p.add_argument("--state-dir", help="directory for checkpoints")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="module user ops come from, as on the workers (repeatable)",
    )
    p.add_argument(
        "--data-root",
        dest="data_roots",
        action="append",
        metavar="DIR",
        help="datasets must lie under DIR (repeatable; default: cwd and temp dir)",
    )
    p.add_argument("--max-message-bytes", type=int, help="largest message accepted")
    p.add_argument("--max-shards", type=int, help="most shards one job may have")
    p.add_argument("--max-queued-jobs", type=int, help="unfinished jobs per client key")
    p.add_argument("--max-result-bytes", type=int, help="largest shard result accepted")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    _security_flags(p)
    p.set_defaults(handler=c.cmd_master)

    p = sub.add_parser("worker", help="run a worker agent")
    p.add_argument("--master", help="master worker address (default tcp://127.0.0.1:5555)")
    p.add_argument("--slots", type=int, help="shards at once, one child process each")
    p.add_argument(
        "--prefetch", type=int, help="short shards queued beyond the slots (default: = slots)"
    )
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="module tasks may come from (repeatable)",
    )
    p.add_argument("--heartbeat-interval", type=float, help="until the master says otherwise")
    p.add_argument("--drain-grace", type=float, help="seconds to finish shards on SIGTERM")
    p.add_argument("--health-file", help="file touched whenever the master is heard")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    _security_flags(p)
    p.set_defaults(handler=c.cmd_worker)

    p = _client(sub, "submit", "submit a job over a dataset", c.cmd_submit)
    p.add_argument("op", help='operation, e.g. "column_stats"')
    p.add_argument("dataset", nargs="?", help="a .npy, .csv or directory, as workers see it")
    p.add_argument("--shards", type=int, help="number of shards (default 16)")
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--task-timeout", type=float)
    p.add_argument("--allow-failures", type=int, default=0)
    p.add_argument("--name", default="")
    p.add_argument("--wait", action="store_true", help="show progress and print the result")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    add_spec_flags(p)

    p = sub.add_parser("plan", help="dry run: print the shards a job would make, and the skew")
    p.add_argument("op", help='operation, e.g. "column_stats"')
    p.add_argument("dataset", nargs="?", help="a .npy, .csv or directory (read here)")
    p.add_argument("--shards", type=int, help="number of shards (default 16)")
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_spec_flags(p)
    p.set_defaults(handler=cmd_plan)

    p = _client(sub, "status", "show one job, or all jobs", c.cmd_status)
    p.add_argument("job", nargs="?")
    p.add_argument("--shards", action="store_true", help="list every shard")

    p = _client(sub, "jobs", "list jobs", c.cmd_jobs)
    p.add_argument("--prune", action="store_true", help="forget finished jobs")
    p.add_argument("--older-than", type=float, help="with --prune: ended this many seconds ago")
    p = _client(sub, "workers", "list workers", c.cmd_workers)

    p = _client(sub, "result", "print a job's result (waits for it)", c.cmd_result)
    p.add_argument("job")
    p.add_argument("--timeout", type=float)

    p = _client(sub, "cancel", "cancel a job", c.cmd_cancel)
    p.add_argument("job")

    p = _client(sub, "watch", "follow a job's progress until it ends", c.cmd_watch)
    p.add_argument("job")
    p.add_argument("--timeout", type=float)

    p = _client(sub, "why", "tell one shard's story: attempts, workers, errors", c.cmd_why)
    p.add_argument("job")
    p.add_argument("shard", type=int)

    p = sub.add_parser("health", help="exit 0 when the master (or this worker) is serving")
    p.add_argument("--master", help="ping this master client address")
    p.add_argument(
        "--file",
        default=os.environ.get("SHARDMILL_WORKER_HEALTH_FILE"),
        help="a worker's health file (default $SHARDMILL_WORKER_HEALTH_FILE)",
    )
    p.add_argument("--max-age", type=float, default=10.0, help="seconds (with --file)")
    _security_flags(p)
    p.set_defaults(handler=c.cmd_health)

    p = sub.add_parser("keygen", help="make master, worker and client CURVE key pairs in DIR")
    p.add_argument("dir", help="key directory (created; keep the *_secret files private)")
    p.add_argument("--force", action="store_true", help="replace existing keys (rotation)")
    p.set_defaults(handler=c.cmd_keygen)

    p = sub.add_parser("demo", help="generate data, start a local cluster, check against NumPy")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--cols", type=int, default=10)
    # Four shards per worker: each shard costs ~1-2 ms of dispatch on a small VM, which a
    # 160 MB job (50 ms of compute per core) notices; see bench/RESULTS.md for the curve.
    p.add_argument("--shards", type=int, help="default: 4 per worker")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dir", help="where to write the dataset (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=c.cmd_demo)
    return parser


def _client(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, handler: Handler
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    p.add_argument(
        "--master",
        default=os.environ.get("SHARDMILL_MASTER"),
        help="master client address (default $SHARDMILL_MASTER or tcp://127.0.0.1:5556)",
    )
    p.add_argument("--connect-timeout", type=float, help="seconds before 'master unreachable'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _security_flags(p)
    p.set_defaults(handler=handler)
    return p


def _security_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", help="CURVE key directory from `shardmill keygen` ($SHARDMILL_KEYS)")
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="plaintext, unauthenticated sockets: trusted networks only",
    )


if __name__ == "__main__":
    sys.exit(main())
