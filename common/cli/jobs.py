"""Client commands: submit a job, ask about jobs and workers, follow, cancel, explain a shard."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from shardmill import exitcodes
from shardmill.cli.pipelines import is_pipeline, show_pipeline, show_pipelines, watch_pipeline
from shardmill.cli.spec import spec_fields
from shardmill.cli.tables import (
    console,
    out,
    show_job,
    show_jobs,
    show_story,
    show_value,
    show_workers,
    to_jsonable,
)
from shardmill.client import Client
from shardmill.job import Job

Handler = Callable[[argparse.Namespace], int]


def connect(args: argparse.Namespace) -> Client:
    return Client(
        args.master, connect_timeout=args.connect_timeout, keys=args.keys, insecure=args.insecure
    )


def cmd_submit(args: argparse.Namespace) -> int:
    with connect(args) as client:
        job = client.submit(
            args.op,
            args.dataset,
            shards=args.shards,
            max_attempts=args.max_attempts,
            task_timeout=args.task_timeout,
            allow_failures=args.allow_failures,
            name=args.name,
            priority=args.priority,
            speculate_after=args.speculate_after,
            **spec_fields(args),
        )
        if not args.wait:
            out(args, {"job_id": job.id}, lambda: print(job.id))
            return exitcodes.OK
        if not args.json:
            console.print(f"job [bold]{job.id}[/] submitted")
            from shardmill.cli.follow import follow  # rich.progress: only when it follows

            follow(job, args.timeout)
        return _print_result(args, job)


def cmd_result(args: argparse.Namespace) -> int:
    with connect(args) as client:
        return _print_result(args, client.job(args.job))


def _print_result(args: argparse.Namespace, job: Job) -> int:
    value = job.result(timeout=args.timeout)
    out(args, {"job_id": job.id, "result": to_jsonable(value)}, lambda: show_value(value))
    return exitcodes.OK


def cmd_status(args: argparse.Namespace) -> int:
    if args.job is None:
        return cmd_jobs(args)
    if is_pipeline(args.job):
        with connect(args) as client:
            pinfo = client.pipeline(args.job).status()
        out(args, pinfo.model_dump(mode="json"), lambda: show_pipeline(pinfo))
        return exitcodes.OK
    with connect(args) as client:
        info = client.status(args.job, shards=args.shards)
    out(args, info.model_dump(mode="json"), lambda: show_job(info))
    return exitcodes.OK


def cmd_jobs(args: argparse.Namespace) -> int:
    if getattr(args, "prune", False):
        return _prune(args)
    last = getattr(args, "last", None)
    with connect(args) as client:
        listed = client.job_list(last)
        pipelines = client.pipelines()
    jobs = listed.jobs

    def human() -> None:
        if jobs or not pipelines:  # "no jobs: submit one ..." only when there is nothing
            show_jobs(jobs)
        shown = sum(j.state != "running" for j in jobs)
        if last is not None and shown < listed.finished_total:
            print(
                f"the {shown} most recently finished of {listed.finished_total:,} shown; "
                "every one: without --last, or --json"
            )
        if pipelines:
            show_pipelines(pipelines)

    out(args, [j.model_dump(mode="json") for j in jobs], human)
    return exitcodes.OK


def _prune(args: argparse.Namespace) -> int:
    if args.older_than is None:  # never forget every finished job by omission
        print(
            "shardmill: --prune needs --older-than SECONDS "
            "(--older-than 0 forgets every finished job)",
            file=sys.stderr,
        )
        return exitcodes.USAGE
    with connect(args) as client:
        pruned = client.prune(args.older_than)
    data = [j.model_dump(mode="json") for j in pruned]
    out(args, data, lambda: print(f"pruned {len(pruned)} finished job(s)"))
    return exitcodes.OK


def cmd_workers(args: argparse.Namespace) -> int:
    with connect(args) as client:
        workers = client.workers()
    out(args, [w.model_dump(mode="json") for w in workers], lambda: show_workers(workers))
    return exitcodes.OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.cancel(args.job)
    out(args, info.model_dump(mode="json"), lambda: print(f"job {info.job_id}: {info.state}"))
    return exitcodes.OK


def cmd_watch(args: argparse.Namespace) -> int:
    from shardmill.cli.follow import follow, poll_until_done

    if is_pipeline(args.job):
        with connect(args) as client:
            pinfo = watch_pipeline(client.pipeline(args.job), args.timeout)
        return _exit_code(pinfo.state)
    with connect(args) as client:
        job = client.job(args.job)
        if args.logs:
            from shardmill.debug.echo import watch_output

            watch_output(client, args.job)
        if args.json:
            info = poll_until_done(
                job,
                args.timeout,
                on_update=lambda i: print(json.dumps(i.model_dump(mode="json")), flush=True),
            )
        else:
            info = follow(job, args.timeout)
    return _exit_code(info.state)


def _exit_code(state: str) -> int:
    return {"done": exitcodes.OK, "cancelled": exitcodes.CANCELLED}.get(
        state, exitcodes.JOB_FAILED if state == "failed" else exitcodes.TIMEOUT
    )


def cmd_why(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.status(args.job, shards=True)
    shards = info.shards or []
    if not 0 <= args.shard < len(shards):
        print(f"shardmill: job {args.job} has shards 0..{len(shards) - 1}", file=sys.stderr)
        return exitcodes.NOT_FOUND
    shard = shards[args.shard]
    out(args, shard.model_dump(mode="json"), lambda: show_story(info.job_id, shard, info.restarts))
    return exitcodes.OK
