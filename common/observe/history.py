"""The cluster over the last minutes: a sample a second of the master's counters and each
worker's heartbeat (CPU, memory, silence), kept by the dashboard for its cluster page.

The master keeps no history of its gauges (Prometheus does that for those who run one); the
dashboard asks once a second and keeps the last `KEEP` samples in memory, so the charts have a
past as soon as the page opens. Nothing is written anywhere: a restarted dashboard starts empty.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from shardmill.errors import ShardmillError
from shardmill.wire.protocol import WorkerInfo

log = logging.getLogger(__name__)

EVERY = 1.0  # seconds between samples
KEEP = 600  # samples kept: ten minutes

# The master's metrics the charts read, by the name they have in a sample.
GAUGES = {
    "shardmill_shards_done_total": "done",
    "shardmill_slots": "slots",
    "shardmill_slots_busy": "busy",
    "shardmill_queued_shards": "queued",
}


@dataclass(frozen=True)
class Sample:
    """One look at the cluster: the master's counters and each worker's last heartbeat."""

    at: float  # wall-clock seconds
    gauges: dict[str, float]
    workers: dict[str, tuple[float | None, int | None, float]]  # id -> (cpu %, rss, beat age)


def parse_gauges(text: str) -> dict[str, float]:
    """The values of GAUGES in a Prometheus text exposition (the master's /metrics)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in GAUGES and not s.labels:
                out[GAUGES[s.name]] = float(s.value)
    return out


def take(metrics: str, workers: list[WorkerInfo], at: float) -> Sample:
    beats = {w.worker_id: (w.cpu, w.rss, w.heartbeat_age) for w in workers}
    return Sample(at, parse_gauges(metrics), beats)


@dataclass
class History:
    """The last KEEP samples, and why the last look failed (if it did)."""

    samples: collections.deque[Sample] = field(
        default_factory=lambda: collections.deque(maxlen=KEEP)
    )
    error: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)
            self.error = ""

    def failed(self, error: str) -> None:
        with self._lock:
            self.error = error

    def columns(self) -> dict[str, Any]:
        """The samples as the charts take them: one list per series, aligned on `t`."""
        with self._lock:
            samples = list(self.samples)
            error = self.error
        t = [s.at for s in samples]
        rate = _rates(t, [s.gauges.get("done") for s in samples])
        ids = sorted({w for s in samples for w in s.workers})
        per = {
            w: {
                key: [s.workers[w][i] if w in s.workers else None for s in samples]
                for i, key in enumerate(("cpu", "rss", "age"))
            }
            for w in ids
        }
        gauges = {k: [s.gauges.get(k) for s in samples] for k in ("slots", "busy", "queued")}
        return {"t": t, "rate": rate, **gauges, "workers": per, "error": error}


def _rates(t: list[float], done: list[float | None]) -> list[float | None]:
    """Shards merged per second between each sample and the one before (None: no data, or
    the counter went back, as after a master restart)."""
    out: list[float | None] = [None] * min(1, len(t))
    for i in range(1, len(t)):
        a, b, gap = done[i - 1], done[i], t[i] - t[i - 1]
        if a is None or b is None or b < a or gap <= 0:
            out.append(None)
        else:
            out.append(round((b - a) / gap, 2))
    return out


class Sampler:
    """A daemon thread that adds a sample every EVERY seconds until stopped."""

    def __init__(self, look: Callable[[], Sample], history: History) -> None:
        self._look = look
        self.history = history
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="history", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.history.add(self._look())
            except ShardmillError as e:  # the master is down or busy: the page says so
                self.history.failed(str(e))
            self._stop.wait(max(0.0, EVERY - (time.monotonic() - began)))
