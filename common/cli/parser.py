"""The `shardmill` argument parser: one builder per subcommand, each naming its handler."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from shardmill import __version__
from shardmill.cli import roles
from shardmill.cli.spec import add_spec_flags

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


Handler = Callable[[argparse.Namespace], int]


def _lazy(module: str, name: str) -> Handler:
    """A command's handler, imported when that command runs: `shardmill master` or `worker`
    need not import the client's commands (the client, rich tables) to start."""

    def handler(args: argparse.Namespace) -> int:
        run: Handler = getattr(importlib.import_module(f"shardmill.cli.{module}"), name)
        return run(args)

    handler.__name__ = name
    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardmill", description="Split a dataset into shards, run them on workers, merge."
    )
    parser.add_argument("--version", action="version", version=f"shardmill {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    builders = (_master, _worker, _submit, _plan, _queries, _debugging, _pictures, _dashboard)
    for add in (*builders, _health, _keygen, _demo, _promote):
        add(sub)
    return parser


def _master(sub: Subparsers) -> None:
    p = sub.add_parser("master", help="run a master")
    p.add_argument("--host", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, help="worker port (default 5555; 0 picks one)")
    p.add_argument("--client-port", type=int, help="client port (default 5556; 0 picks one)")
    p.add_argument(
        "--metrics-port", type=int, help="serve Prometheus /metrics over HTTP (default: off)"
    )
    p.add_argument("--heartbeat-interval", type=float, help="seconds (default 1.0)")
    p.add_argument("--heartbeat-liveness", type=int, help="missed beats before expiry (3)")
    _speculation_flags(p)
    p.add_argument(
        "--prefetch-below",
        type=float,
        metavar="SECONDS",
        help="queue shards on workers for jobs whose shards are shorter (default 0.1; 0: never)",
    )
    p.add_argument("--state-dir", help="directory for checkpoints")
    _imports(p, "module user ops come from, as on the workers (repeatable)")
    p.add_argument(
        "--data-root",
        dest="data_roots",
        action="append",
        metavar="DIR",
        help="datasets must lie under DIR (repeatable; default: cwd and temp dir)",
    )
    _limit_flags(p)
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--log-format", choices=["text", "json"], help="json: one object per line")
    p.add_argument("--health-file", help="file touched on each heartbeat while serving")
    _standby_flags(p)
    _security_flags(p)
    p.set_defaults(handler=roles.cmd_master)


def _limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-message-bytes", type=int, help="largest message accepted")
    p.add_argument("--max-shards", type=int, help="most shards one job may have")
    p.add_argument("--max-queued-jobs", type=int, help="unfinished jobs per client key")
    p.add_argument("--max-result-bytes", type=int, help="largest shard result accepted")
    p.add_argument(
        "--finished-jobs-kept",
        type=int,
        help="without --state-dir: finished jobs kept in memory (older ones are forgotten)",
    )
    p.add_argument(
        "--finished-bytes-kept",
        type=int,
        help="without --state-dir: bytes of finished jobs' results kept in memory",
    )
    p.add_argument(
        "--edge-budget",
        type=int,
        help="bytes of a pipeline stage's output waiting for the next stage (default 2 GiB)",
    )


def _standby_flags(p: argparse.ArgumentParser) -> None:
    """A master with a standby (docs/standby.md)."""
    p.add_argument(
        "--peer",
        help="the other master's replication address, tcp://HOST:5557 (or both masters', "
        "comma-separated: the one on this host is skipped)",
    )
    p.add_argument("--replica-port", type=int, help="port to replicate on as standby (5557)")
    p.add_argument("--etcd", help="etcd client URL that elects the primary, http://HOST:2379")
    p.add_argument("--election-key", help="prefix of the election's etcd keys (shardmill)")
    p.add_argument(
        "--k8s-lease", help="in a Kubernetes pod: the Lease (in its namespace) that elects"
    )
    p.add_argument("--lease-ttl", type=int, help="seconds the primary's lease lasts (2)")
    p.add_argument(
        "--standby",
        action="store_true",
        default=None,
        help="without an arbiter: start as standby until `shardmill promote`",
    )
    p.add_argument("--standby-timeout", type=float, help="seconds a commit waits for it (1.0)")
    p.add_argument("--name", help="this master's name in the election (default host-pid)")
    p.add_argument(
        "--alone",
        action="store_true",
        default=None,
        help="run a state dir that was one of a pair without --peer (the other one stopped)",
    )


def _promote(sub: Subparsers) -> None:
    p = sub.add_parser(
        "promote", help="make a standby master (without an arbiter) take over as primary"
    )
    p.add_argument("state_dir", help="the standby's --state-dir")
    p.set_defaults(handler=roles.cmd_promote)


def _speculation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--speculate-after",
        type=float,
        metavar="X",
        help="back up a shard running X times its job's median on an idle worker (2; 0: off)",
    )
    p.add_argument(
        "--speculate-min-age", type=float, metavar="S", help="never before S seconds (1.0)"
    )


def _worker(sub: Subparsers) -> None:
    p = sub.add_parser("worker", help="run a worker agent")
    p.add_argument("--master", help="master worker address (default tcp://127.0.0.1:5555)")
    p.add_argument("--slots", type=int, help="shards at once, one child process each")
    p.add_argument(
        "--prefetch",
        type=int,
        help="most short shards queued beyond the slots (default 64 per slot)",
    )
    _imports(p, "module tasks may come from (repeatable)")
    p.add_argument("--heartbeat-interval", type=float, help="until the master says otherwise")
    p.add_argument("--drain-grace", type=float, help="seconds to finish shards on SIGTERM")
    p.add_argument(
        "--output-bytes", type=int, help="the last bytes each attempt prints, kept (default 1 MiB)"
    )
    p.add_argument("--health-file", help="file touched whenever the master is heard")
    p.add_argument("--alive-file", help="file touched on every turn of its loop, master or not")
    p.add_argument("--shuffle-dir", help="pipelines' map outputs (default: a temporary dir)")
    p.add_argument("--shuffle-host", help="the address peers fetch map outputs at")
    p.add_argument("--shuffle-port", type=int, help="the port they are served on (0: any)")
    p.add_argument("--shuffle-memory", type=int, help="shuffle buffer bytes (default 1 GiB)")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        default=None,
        help="run pickled calls from clients the master allows (trusted clusters only)",
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--log-format", choices=["text", "json"], help="json: one object per line")
    _security_flags(p)
    p.set_defaults(handler=roles.cmd_worker)


def _submit(sub: Subparsers) -> None:
    p = _client(sub, "submit", "submit a job over a dataset", _lazy("jobs", "cmd_submit"))
    p.add_argument("op", help='operation, e.g. "column_stats"')
    p.add_argument("dataset", nargs="?", help="a .npy, .csv or directory, as workers see it")
    p.add_argument("--shards", type=int, help="number of shards (default 16)")
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--task-timeout", type=float)
    p.add_argument("--allow-failures", type=int, default=0)
    p.add_argument("--name", default="")
    p.add_argument("--priority", type=int, default=0, help="higher first, within your share")
    p.add_argument(
        "--speculate-after",
        type=float,
        metavar="X",
        help="back up shards running X times the median (default: the master's; 0: never)",
    )
    p.add_argument("--wait", action="store_true", help="show progress and print the result")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    add_spec_flags(p)


def _plan(sub: Subparsers) -> None:
    p = sub.add_parser("plan", help="dry run: print the shards a job would make, and the skew")
    p.add_argument("op", help='operation, e.g. "column_stats"')
    p.add_argument("dataset", nargs="?", help="a .npy, .csv or directory (read here)")
    p.add_argument("--shards", type=int, help="number of shards (default 16)")
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_spec_flags(p)
    p.set_defaults(handler=_lazy("spec", "cmd_plan"))


def _queries(sub: Subparsers) -> None:
    """The commands that ask the master about jobs and workers, or act on one job."""
    p = _client(sub, "status", "show one job, or all jobs", _lazy("jobs", "cmd_status"))
    p.add_argument("job", nargs="?")
    p.add_argument("--shards", action="store_true", help="list every shard")
    p = _client(sub, "jobs", "list jobs", _lazy("jobs", "cmd_jobs"))
    p.add_argument(
        "--last",
        type=int,
        metavar="N",
        help="only the N most recently finished (and every running)",
    )
    p.add_argument("--prune", action="store_true", help="forget finished jobs (needs --older-than)")
    p.add_argument(
        "--older-than", type=float, help="with --prune: that ended this many seconds ago (0: all)"
    )
    _client(sub, "workers", "list workers", _lazy("jobs", "cmd_workers"))
    p = _client(sub, "result", "print a job's result (waits for it)", _lazy("jobs", "cmd_result"))
    p.add_argument("job")
    p.add_argument("--timeout", type=float)
    p = _client(sub, "cancel", "cancel a job", _lazy("jobs", "cmd_cancel"))
    p.add_argument("job")
    p = _client(sub, "watch", "follow a job's progress until it ends", _lazy("jobs", "cmd_watch"))
    p.add_argument("job")
    p.add_argument("--timeout", type=float)
    p.add_argument("--logs", action="store_true", help="print what its tasks print, live")
    p = _client(
        sub, "why", "tell one shard's story: attempts, workers, errors", _lazy("jobs", "cmd_why")
    )
    p.add_argument("job")
    p.add_argument("shard", type=int)


def _debugging(sub: Subparsers) -> None:
    """What failed attempts printed, and running one of them again here."""
    p = _client(
        sub,
        "logs",
        "print what a job's attempts printed, with their tracebacks",
        _lazy("debug", "cmd_logs"),
    )
    p.add_argument("job")
    p.add_argument("shard", type=int, nargs="?", help="one shard (default: every shard's)")
    p.add_argument("--attempt", type=int, help="only this attempt (1 is the first)")
    p = sub.add_parser(
        "replay", help="run a failed attempt again here, from its bundle in the state dir"
    )
    p.add_argument("job")
    p.add_argument("shard", type=int)
    p.add_argument("--attempt", type=int, help="that attempt (default: the latest failed one)")
    p.add_argument("--pdb", action="store_true", help="stop in pdb at the exception")
    p.add_argument(
        "--state-dir",
        default=os.environ.get("SHARDMILL_MASTER_STATE_DIR"),
        help="the master's state dir (default $SHARDMILL_MASTER_STATE_DIR)",
    )
    p.set_defaults(handler=_lazy("debug", "cmd_replay"))


def _pictures(sub: Subparsers) -> None:
    """Commands that picture one job, live or (with a state dir) after a master restart."""
    for name, help, handler, default in [
        (
            "report",
            "write a job's report: one self-contained HTML file",
            _lazy("observe", "cmd_report"),
            "html",
        ),
        (
            "trace",
            "write a job's Chrome trace (Perfetto, chrome://tracing)",
            _lazy("observe", "cmd_trace"),
            "json",
        ),
    ]:
        p = _client(sub, name, help, handler)
        p.add_argument("job")
        p.add_argument(
            "-o", "--output", help=f"file to write (default JOB-{name}.{default}; - for stdout)"
        )
        p.set_defaults(output_default=f"{name}.{default}")


def _dashboard(sub: Subparsers) -> None:
    p = _client(
        sub,
        "dashboard",
        "serve a live web dashboard of jobs and workers",
        _lazy("observe", "cmd_dashboard"),
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="interface (default 127.0.0.1: this machine)"
    )
    p.add_argument("--port", type=int, default=8787, help="HTTP port (default 8787)")
    p.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        metavar="NAME",
        help="a host name browsers may reach it by besides this machine's loopback names "
        "(repeatable; '*' for any)",
    )
    p.add_argument(
        "--token",
        help="allow cancelling jobs with 'Authorization: Bearer TOKEN' "
        "($SHARDMILL_DASHBOARD_TOKEN; default: read-only)",
    )


def _health(sub: Subparsers) -> None:
    p = sub.add_parser(
        "health",
        help="exit 0 when this role is serving (its health file is fresh) or a master answers",
    )
    p.add_argument("--master", help="ping this master client address instead of a file")
    p.add_argument(
        "--file",
        help="a master's or worker's --health-file (default: $SHARDMILL_WORKER_HEALTH_FILE, "
        "$SHARDMILL_MASTER_HEALTH_FILE or $SHARDMILL_HEALTH_FILE, the first one set)",
    )
    p.add_argument("--max-age", type=float, default=10.0, help="seconds (with --file)")
    _security_flags(p)
    p.set_defaults(handler=roles.cmd_health)


def _keygen(sub: Subparsers) -> None:
    p = sub.add_parser("keygen", help="make master, worker and client CURVE key pairs in DIR")
    p.add_argument(
        "dir",
        nargs="?",
        help="key directory (created; keep the *_secret files private); default: this "
        "user's ~/.config/shardmill/keys, which every role then finds by itself",
    )
    p.add_argument("--force", action="store_true", help="replace existing keys (rotation)")
    who = p.add_mutually_exclusive_group()
    who.add_argument(
        "--client", metavar="NAME", help="add a named client (its own jobs; hand-out folder)"
    )
    who.add_argument("--worker", metavar="NAME", help="add a named worker key (hand-out folder)")
    p.set_defaults(handler=roles.cmd_keygen)


def _demo(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="generate data, start a local cluster, check against NumPy")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--cols", type=int, default=10)
    # Four shards per worker: each shard costs ~1-2 ms of dispatch on a small VM, which a
    # 160 MB job (50 ms of compute per core) notices; see bench/RESULTS.md for the curve.
    p.add_argument("--shards", type=int, help="default: 4 per worker")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dir", help="where to write the dataset (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=roles.cmd_demo)


def _imports(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE", help=help)


def _client(sub: Subparsers, name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
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
