"""The master's Prometheus metrics: served from its own process, labels bounded (none per shard).

Counters and histograms are fed by the poll loop as it carries out the brain's commands;
gauges are a snapshot of the brain the loop takes (`observe`) and a scrape reads, so the HTTP
thread of `--metrics-port` never touches the brain itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shardmill.errors import ConfigError
from shardmill.master.brain.transitions import JobState, ShardState

if TYPE_CHECKING:
    from shardmill.master.brain.model import Job
    from shardmill.master.brain.state import MasterState

NS = "shardmill"
LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SHARD_SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)


class Snapshot(Collector):
    """Gauges read from the brain at `observe` time."""

    def __init__(self) -> None:
        self.values: tuple[tuple[str, str, dict[str, float]], ...] = ()
        self.shuffle: Mapping[str, int] = {}  # worker -> map output bytes (its heartbeats)

    def observe(self, brain: MasterState, now: float) -> None:
        jobs = {str(s): 0.0 for s in JobState}
        queued = 0.0
        for job in brain.jobs.values():
            jobs[str(job.state)] += 1
        for state, n in brain.archive.by_state.items():  # finished jobs' summaries
            jobs[state] += n
        for job in brain.active.values():
            queued += job.counts[ShardState.QUEUED] + job.counts[ShardState.WAITING]
        workers = brain.workers.values()
        ages = [now - w.last_seen for w in workers]
        self.values = (  # one assignment: a scrape in another thread sees all or nothing new
            ("jobs", "Jobs the master knows, by state", jobs),
            ("workers", "Workers registered and alive", {"": float(len(workers))}),
            ("slots", "Worker slots in total", {"": float(sum(w.slots for w in workers))}),
            ("slots_busy", "Worker slots running a shard", {"": float(_busy(brain))}),
            ("queued_shards", "Shards waiting for a slot (queue depth)", {"": queued}),
            (
                "heartbeat_age_max_seconds",
                "Longest silence of a live worker",
                {"": max(ages, default=0.0)},
            ),
            (
                "worker_rtt_max_seconds",
                "Longest measured round trip to a worker (ping to echo, smoothed)",
                {"": max((w.rtt or 0.0 for w in workers), default=0.0)},
            ),
            (
                "shuffle_bytes",
                "Pipelines' map outputs spilled to workers' shuffle directories, held now",
                {"": float(sum(self.shuffle.values()))},
            ),
            (
                "prefetch_window_shards",
                "Short shards workers may queue beyond their slots, in total",
                {"": float(sum(w.window for w in workers))},
            ),
        )

    def collect(self) -> Iterator[Metric]:
        for name, doc, values in self.values:
            labelled = any(values) and "" not in values
            family = GaugeMetricFamily(f"{NS}_{name}", doc, labels=["state"] if labelled else None)
            for label, value in values.items():
                family.add_metric([label] if labelled else [], value)
            yield family


def _busy(brain: MasterState) -> int:
    return sum(min(w.slots, w.leases.held) for w in brain.workers.values())


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{NS}_{name}", doc, labels, registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"{NS}_{name}", doc, registry=r, buckets=buckets)

        self.shards_done = counter("shards_done", "Shards merged")
        self.attempts_failed = counter("attempts_failed", "Failed shard attempts", ("kind",))
        self.shards_failed = counter("shards_failed", "Shards failed for good (at job end)")
        self.shards_retried = counter(
            "shards_retried", "Attempts beyond a shard's first (at job end)"
        )
        self.shards_requeued = counter("shards_requeued", "Shards requeued from lost workers")
        self.duplicates = counter(
            "duplicate_results",
            "Results of second executions of merged shards, dropped (per shard)",
        )
        self.resent = counter(
            "resent_results", "Copies of a merged execution's result that came again, dropped"
        )
        self.unnamed = counter(
            "unnamed_messages",
            "Messages under an id ZeroMQ made up (a replaced connection): matched to their "
            "worker, or refused",
            ("outcome",),
        )
        self.backups = counter("backups_started", "Speculative second attempts of stragglers")
        self.jobs_ended = counter("jobs_ended", "Jobs that ended, by state", ("state",))
        self.shard_seconds = histogram(
            "shard_duration_seconds", "Time a worker spent on a shard", SHARD_SECONDS
        )
        self.merge_seconds = histogram("merge_seconds", "Time to fold in one result", LATENCY)
        self.commit_seconds = histogram(
            "checkpoint_commit_seconds", "Time of one checkpoint commit", LATENCY
        )
        self.snapshot = Snapshot()
        r.register(self.snapshot)

    def job_ended(self, job: Job) -> None:
        self.jobs_ended.labels(str(job.state)).inc()
        self.shards_failed.inc(job.counts[ShardState.FAILED])
        self.shards_retried.inc(sum(max(0, len(s.history) - 1) for s in job.shards))

    def serve(self, host: str, port: int | None) -> WSGIServer | None:
        """`--metrics-port`: an HTTP server thread for scrapes (gauges as of the last beat)."""
        if port is None:
            return None
        try:
            server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port} ({e.strerror}); pick another "
                "--metrics-port (0 picks a free one)"
            ) from e
        return server

    def exposition(self, brain: MasterState) -> bytes:
        """The text a Prometheus scrape gets, with gauges as of now."""
        self.snapshot.observe(brain, time.monotonic())
        return generate_latest(self.registry)
