"""Commands that start something: a master, a worker, the demo; and keygen and health."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shardmill import exitcodes
from shardmill.config import MasterSettings, WorkerSettings
from shardmill.errors import MasterUnreachable

MASTER_FLAGS = (
    "keys",
    "insecure",
    "data_roots",
    "max_message_bytes",
    "max_shards",
    "max_queued_jobs",
    "max_result_bytes",
    "finished_jobs_kept",
    "finished_bytes_kept",
    "edge_budget",
    "host",
    "port",
    "client_port",
    "metrics_port",
    "heartbeat_interval",
    "heartbeat_liveness",
    "prefetch_below",
    "speculate_after",
    "speculate_min_age",
    "state_dir",
    "log_level",
    "log_format",
    "health_file",
    "imports",
    "peer",
    "replica_port",
    "etcd",
    "election_key",
    "k8s_lease",
    "lease_ttl",
    "standby",
    "standby_timeout",
    "name",
    "alone",
)
WORKER_FLAGS = (
    "keys",
    "insecure",
    "master",
    "slots",
    "prefetch",
    "imports",
    "heartbeat_interval",
    "drain_grace",
    "health_file",
    "alive_file",
    "shuffle_dir",
    "shuffle_host",
    "shuffle_port",
    "shuffle_memory",
    "log_level",
    "log_format",
    "output_bytes",
    "allow_pickle",
)


def given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """Only flags the user gave, so environment variables still fill in the rest."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def cmd_master(args: argparse.Namespace) -> int:
    from shardmill.cli.logs import setup_logging
    from shardmill.master.process import serve
    from shardmill.ops.registry import Registry

    settings = MasterSettings(**given(args, *MASTER_FLAGS))
    setup_logging("master", settings.log_level, settings.log_format)
    if not _modules_found("master", settings.imports):
        return exitcodes.CONFIG
    # The modules user ops come from: the master combines and finalizes with them.
    registry = Registry(settings.imports, worker="master")
    for name, tb in registry.broken.items():
        last = tb.strip().splitlines()[-1]
        print(
            f"shardmill master: module {name} fails to import ({last}); "
            f"see why with: python -c 'import {name}'",
            file=sys.stderr,
        )
    if registry.broken:
        return exitcodes.CONFIG
    if settings.peer is None and settings.state_dir is not None and not settings.alone:
        from shardmill.master.standby.journal import paired_alone

        refused = paired_alone(settings.state_dir)
        if refused:
            print(f"shardmill master: {refused}", file=sys.stderr)
            return exitcodes.CONFIG
    return serve(settings, registry)


def _modules_found(role: str, names: list[str]) -> bool:
    """Every module to import is on the Python path; else one line says which and the fix."""
    from shardmill.ops.registry import missing_modules

    missing = missing_modules(names)
    if missing:
        print(
            f"shardmill {role}: cannot find module(s) {', '.join(missing)} on the Python path; "
            "install them or set PYTHONPATH, then start it again",
            file=sys.stderr,
        )
    return not missing


def cmd_worker(args: argparse.Namespace) -> int:
    from shardmill.cli.logs import setup_logging
    from shardmill.worker.agent import serve

    settings = WorkerSettings(**given(args, *WORKER_FLAGS))
    setup_logging("worker", settings.log_level, settings.log_format)
    if not _modules_found("worker", settings.imports):
        return exitcodes.CONFIG
    return serve(settings)


def cmd_health(args: argparse.Namespace) -> int:
    from shardmill import health

    file = args.file or (None if args.master else health.default_file())
    if file:
        problem = health.stale(Path(file), args.max_age)
        if problem:
            print(f"unhealthy: {problem}", file=sys.stderr)
            return exitcodes.UNHEALTHY
        return exitcodes.OK
    try:
        from shardmill.client import Client

        Client(args.master, connect_timeout=3.0, keys=args.keys, insecure=args.insecure).ping()
    except MasterUnreachable as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return exitcodes.UNHEALTHY
    return exitcodes.OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from shardmill.wire.security import add_identity, default_keys, keygen

    directory = Path(args.dir) if args.dir else default_keys()
    if args.client or args.worker:
        role, name = ("client", args.client) if args.client else ("worker", args.worker)
        out = add_identity(directory, role, name)
        print(
            f"{role} {name!r}: its public key is {directory}/{role}s/{name}.key (send the "
            "master SIGHUP to accept it)"
        )
        print(f"hand {out} to it, and run it with --keys {out.name} (its pair and master.key)")
        return exitcodes.OK
    written = keygen(directory, force=args.force)
    print(f"keys in {directory}: " + (", ".join(p.name for p in written) or "all present"))
    if not args.dir:
        print("every role started by this user on this machine uses them: no --keys needed")
        return exitcodes.OK
    print(f"master: --keys {directory} (it accepts the keys in workers/ and clients/)")
    print("workers and clients: --keys DIR with their *.key_secret and master.key")
    return exitcodes.OK


def cmd_demo(args: argparse.Namespace) -> int:
    from shardmill.cli.demo import run_demo

    return run_demo(
        rows=args.rows,
        cols=args.cols,
        shards=args.shards or 4 * args.workers,
        workers=args.workers,
        directory=args.dir,
        as_json=args.json,
    )


def cmd_promote(args: argparse.Namespace) -> int:
    """Ask the standby on STATE_DIR to take over: it watches for this file (docs/standby.md)."""
    state_dir = Path(args.state_dir)
    if not (state_dir / "shardmill.db").exists():
        print(
            f"shardmill promote: {state_dir} holds no shardmill state; give the standby's "
            "--state-dir",
            file=sys.stderr,
        )
        return exitcodes.CONFIG
    (state_dir / "promote").touch()
    print(f"asked the standby on {state_dir} to take over as primary")
    return exitcodes.OK
