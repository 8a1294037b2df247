"""Debugging commands: `logs` prints what each attempt printed, with its traceback; `replay`
runs a failed attempt again in this process."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any

from shardmill import exitcodes
from shardmill.cli.jobs import connect
from shardmill.cli.tables import out
from shardmill.errors import ReplayError
from shardmill.wire.protocol import AttemptInfo, ErrorInfo, ShardInfo


def cmd_logs(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.status(args.job, shards=True)
    shards = info.shards or []
    if args.shard is not None and not 0 <= args.shard < len(shards):
        print(f"shardmill: job {args.job} has shards 0..{len(shards) - 1}", file=sys.stderr)
        return exitcodes.NOT_FOUND
    picked = shards if args.shard is None else [shards[args.shard]]
    rows = [
        (s, a)
        for s in picked
        for a in s.history
        if (args.attempt is None or a.attempt == args.attempt)
        and (args.shard is not None or a.output or a.error is not None)
    ]
    if args.attempt is not None and not rows:
        where = f"shard {args.shard}" if args.shard is not None else "any shard"
        print(
            f"shardmill: {where} of job {args.job} has no attempt {args.attempt}; "
            f"`shardmill why {args.job} SHARD` lists them",
            file=sys.stderr,
        )
        return exitcodes.NOT_FOUND
    out(args, [_entry(s, a) for s, a in rows], lambda: _show(rows))
    return exitcodes.OK


def _entry(shard: ShardInfo, a: AttemptInfo) -> dict[str, Any]:
    return {
        "shard": shard.index,
        "attempt": a.attempt,
        "worker": a.worker,
        "outcome": a.outcome,
        "output": a.output,
        "error": None if a.error is None else a.error.model_dump(mode="json"),
    }


def _show(rows: list[tuple[ShardInfo, AttemptInfo]]) -> None:
    if not rows:
        print("no attempt printed anything or failed")
    for shard, a in rows:
        print(f"==> shard {shard.index} attempt {a.attempt} on {a.worker}: {a.outcome} <==")
        sys.stdout.write(a.output if a.output.endswith("\n") or not a.output else a.output + "\n")
        if a.error is not None:
            sys.stdout.write(a.error.traceback or f"{a.error.type}: {a.error.message}\n")


def cmd_replay(args: argparse.Namespace) -> int:
    from shardmill.debug.bundle import load
    from shardmill.worker.replay import run

    try:
        bundle = load(args.job, args.shard, attempt=args.attempt, state_dir=args.state_dir)
    except ReplayError as e:
        print(f"shardmill: {e}", file=sys.stderr)
        return exitcodes.NOT_FOUND
    was = f"{bundle.error.type or bundle.error.kind}: {bundle.error.message}"
    print(
        f"replaying job {bundle.job_id} shard {bundle.shard} attempt {bundle.attempt} "
        f"({bundle.function}; it failed on {bundle.worker} with {was})",
        flush=True,
    )
    try:
        value = run(bundle, pdb=args.pdb, say=lambda note: print(note, flush=True))
    except ReplayError as e:
        print(f"shardmill: {e}", file=sys.stderr)
        return exitcodes.ERROR
    except (Exception, SystemExit) as e:  # the task's own: shown as it would be at the worker
        traceback.print_exc()
        tail = "the same as the attempt" if _same(e, bundle.error) else f"the attempt: {was}"
        print(f"replay raised {type(e).__name__}: {e} ({tail})")
        return exitcodes.ERROR
    print(f"replay returned without an error (the attempt: {was}): {value!r}")
    return exitcodes.OK


def _same(e: BaseException, error: ErrorInfo) -> bool:
    return type(e).__name__ == error.type.rpartition(".")[2] and str(e) == error.message
