"""A job's attempts laid out in time: one lane per worker slot, and what the layout measures.

Built from `client.status(job, shards=True)` alone: every attempt's worker, start, end and
outcome is part of the job's checkpointed story, so a timeline of a job that ran before a master
restart is as complete as one of a live job. The report, the trace and the dashboard all draw it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shardmill.wire.protocol import JobInfo

# An attempt's end is when its result reached the master, its start that minus the time the
# worker reports: back-to-back shards on one slot can seem to overlap by this much.
CLOCK_SLACK = 0.01
# Karp-Flatt measures the serial part of a job that could fill its slots: below this wall time,
# or fewer merged shards than twice the slots, start-up and the last shards' tail are most of
# the job, and the number would describe them, not the job.
KARP_FLATT_MIN_WALL = 1.0
KARP_FLATT_MIN_ROUNDS = 2


@dataclass(frozen=True)
class Bar:
    """One attempt of one shard on one slot of a worker."""

    shard: int
    attempt: int
    worker: str
    slot: int  # lane within the worker: attempts that overlap in time get different slots
    start: float  # seconds since the job was submitted
    end: float
    outcome: str  # ok, error, crash, lost, timeout, cancelled, superseded, running, ...
    error: str = ""

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def merged(self) -> bool:
        return self.outcome in ("ok", "ok (late)")


@dataclass(frozen=True)
class Efficiency:
    """How well the job used its slots (the numbers Amdahl's law asks you to reason about)."""

    wall: float  # submit to end (or to now)
    work: float  # the sum of the shard times that were merged
    slots: int  # the most slots alive at once (a lost worker and its stand-in count once)
    speedup: float  # work / wall: how many slots' worth of work ran at once on average
    efficiency: float  # speedup / slots
    serial_fraction: float  # Amdahl: time no shard ran (planning, queueing, merging) over the job
    karp_flatt: float | None  # (1/speedup - 1/slots) / (1 - 1/slots): the measured serial part
    karp_flatt_why: str = ""  # why there is none, when there is none
    lanes: int = 0  # slots that ran at least one attempt, over the whole job


@dataclass
class Timeline:
    job: JobInfo
    bars: list[Bar] = field(default_factory=list)
    lanes: list[tuple[str, int]] = field(default_factory=list)  # (worker, slot), in draw order
    length: float = 0.0  # seconds from submit to the job's end (or now)

    @classmethod
    def of(cls, job: JobInfo, now: float | None = None) -> Timeline:
        origin = job.submitted_at
        end = job.finished_at if job.finished_at is not None else (now or time.time())
        raw = [
            (
                _ran_from(a.started, a.ended, a.ran) - origin,
                (a.ended or end) - origin,
                shard.index,
                a,
            )
            for shard in job.shards or []
            for a in shard.history
        ]
        raw.sort(key=lambda r: (r[3].worker, r[0], r[2]))
        busy_until: dict[str, list[float]] = {}  # per worker: each slot's last end
        bars = []
        for start, stop, index, a in raw:
            slots = busy_until.setdefault(a.worker, [])
            slot = next((i for i, t in enumerate(slots) if t <= start + CLOCK_SLACK), len(slots))
            if slot == len(slots):
                slots.append(stop)
            slots[slot] = stop
            error = "" if a.error is None else f"{a.error.type or a.error.kind}: {a.error.message}"
            bars.append(Bar(index, a.attempt, a.worker, slot, start, stop, a.outcome, error))
        lanes = [(w, s) for w in sorted(busy_until) for s in range(len(busy_until[w]))]
        return cls(job, bars, lanes, max(0.0, end - origin))

    def efficiency(self) -> Efficiency:
        merged = [b for b in self.bars if b.merged]
        work = sum(b.seconds for b in merged)
        wall = self.length or 1e-9
        slots = max(1, self.slots_at_once())
        speedup = work / wall
        idle = _uncovered(self.bars, self.length)
        karp, why = None, _no_karp_flatt(self.length, len(merged), slots)
        if not why and speedup > 0:
            karp = (1 / speedup - 1 / slots) / (1 - 1 / slots)
        return Efficiency(
            wall=self.length,
            work=work,
            slots=slots,
            speedup=speedup,
            efficiency=speedup / slots,
            serial_fraction=idle / wall,
            karp_flatt=karp,
            karp_flatt_why=why,
            lanes=len(self.lanes),
        )

    def slots_at_once(self) -> int:
        """The most slots alive at one time: a worker's slots count from its first attempt's
        start to its last attempt's end, so a lost worker and the one that took over its
        shards are not counted as running side by side."""
        events: list[tuple[float, int]] = []
        for worker, slots in self.worker_slots().items():
            mine = [b for b in self.bars if b.worker == worker]
            events += [(min(b.start for b in mine), slots), (max(b.end for b in mine), -slots)]
        alive = most = 0
        for _, change in sorted(events, key=lambda e: (e[0], e[1])):  # ends before starts
            alive += change
            most = max(most, alive)
        return most

    def worker_slots(self) -> dict[str, int]:
        """Each worker's lanes: the slots it ran attempts in."""
        out: dict[str, int] = {}
        for worker, _ in self.lanes:
            out[worker] = out.get(worker, 0) + 1
        return out

    def retried(self) -> list[int]:
        """Shards that took more than one attempt."""
        counts: dict[int, int] = {}
        for b in self.bars:
            counts[b.shard] = counts.get(b.shard, 0) + 1
        return sorted(s for s, n in counts.items() if n > 1)

    def lost_workers(self) -> list[str]:
        return sorted({b.worker for b in self.bars if b.outcome == "lost"})

    def per_worker(self) -> dict[str, tuple[int, float]]:
        """Each worker's slot count and busy fraction over the job."""
        out = {}
        for worker, slots in sorted(self.worker_slots().items()):
            busy = sum(b.seconds for b in self.bars if b.worker == worker)
            out[worker] = (slots, busy / (slots * (self.length or 1e-9)))
        return out

    def durations(self) -> list[float]:
        return [b.seconds for b in self.bars if b.merged]


def _ran_from(started: float, ended: float | None, ran: float | None) -> float:
    """When the worker began running it: an attempt starts at its lease, and a prefetched shard
    waits in its worker's queue before it runs."""
    if ended is None or ran is None:
        return started
    return max(started, ended - ran)


def _no_karp_flatt(wall: float, merged: int, slots: int) -> str:
    """Why the Karp-Flatt metric would mean nothing for this job ("" when it means something)."""
    if slots < 2:
        return "one slot: there is no parallel part to measure"
    if wall < KARP_FLATT_MIN_WALL:
        return (
            f"the job took {wall:.3f} s, under {KARP_FLATT_MIN_WALL:g} s: start-up and "
            "merging are most of it"
        )
    if merged < KARP_FLATT_MIN_ROUNDS * slots:
        return (
            f"{merged} merged shards for {slots} slots: fewer than {KARP_FLATT_MIN_ROUNDS} "
            "rounds, so the last round's idle slots are most of what it would measure"
        )
    return ""


def _uncovered(bars: list[Bar], length: float) -> float:
    """Seconds of [0, length] during which no attempt ran."""
    covered, reach = 0.0, 0.0
    for b in sorted(bars, key=lambda b: b.start):
        start, end = max(b.start, reach), min(b.end, length)
        if end > start:
            covered += end - start
            reach = end
    return max(0.0, length - covered)
