"""What this worker costs its host: CPU and memory of the agent and its children, sampled for
the heartbeat (the dashboard's per-worker charts)."""

from __future__ import annotations

import psutil

# Walking the process tree costs about a millisecond; heartbeats can come every few ms in
# tests, so a sample is kept this long and sent with every beat in between.
SAMPLE_EVERY = 1.0


class Usage:
    """CPU as percent of one core since the last sample (100 = a core busy), RSS in bytes."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._known: dict[int, psutil.Process] = {}  # cpu_percent() measures since its last call
        self._at = float("-inf")
        self.cpu = 0.0
        self.rss = 0

    def sample(self, now: float) -> tuple[float, int]:
        """(cpu percent, rss bytes), taken again when the last sample is SAMPLE_EVERY old."""
        if now - self._at >= SAMPLE_EVERY:
            self._at = now
            self.cpu, self.rss = self._take()
        return self.cpu, self.rss

    def _take(self) -> tuple[float, int]:
        try:
            procs = [self._me, *self._me.children(recursive=True)]
        except psutil.Error:
            procs = [self._me]
        alive: dict[int, psutil.Process] = {}
        cpu, rss = 0.0, 0
        for proc in procs:
            known = self._known.get(proc.pid, proc)  # the same object: its CPU clock goes on
            try:
                with known.oneshot():
                    cpu += known.cpu_percent()
                    rss += known.memory_info().rss
            except psutil.Error:  # it ended between the listing and the look
                continue
            alive[proc.pid] = known
        self._known = alive
        return round(cpu, 1), rss
