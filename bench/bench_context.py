"""What every workload shares: sizes, repetitions, the dataset and the long-lived systems."""

from __future__ import annotations

from collections.abc import Callable

from bench_data import Dataset, ensure_dataset
from bench_harness import CpuMonitor, Metric, Sizes, interleaved, new_cluster, wait_quiet
from bench_systems import PoolSystem, ShardmillSystem, System, optional_systems

QUIET_SHARE = 0.1  # other processes' share of the CPUs that counts as quiet


class Bench:
    """Creates the dataset, the shared cluster and the shared Pool on first use; closes them."""

    def __init__(self, sizes: Sizes, reps: int, *, quiet_wait: float = 0.0) -> None:
        self.sizes = sizes
        self.reps = reps
        self.quiet_wait = quiet_wait
        self.monitor = CpuMonitor()  # replaced per workload by run.py
        self.notes: list[str] = []
        self._dataset: Dataset | None = None
        self._shardmill: ShardmillSystem | None = None
        self._pool: PoolSystem | None = None
        self.others, self.skipped = optional_systems()

    @property
    def heavy_reps(self) -> int:
        """Repetitions for the multi-second workloads (W5, scale): at most 3."""
        return max(1, min(self.reps, 3))

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset, note = ensure_dataset(self.sizes.rows, self.sizes.cols)
            self.notes.append(note)
        return self._dataset

    @property
    def pool(self) -> PoolSystem:
        if self._pool is None:
            self._pool = PoolSystem()
        return self._pool

    @property
    def shardmill(self) -> ShardmillSystem:
        if self._shardmill is None:
            self._shardmill = ShardmillSystem(new_cluster().start())
        return self._shardmill

    def fresh_cluster(self) -> None:
        """Stop the shared cluster: the next workload starts a new one, free of old jobs."""
        if self._shardmill is not None:
            self._shardmill.close()
            self._shardmill = None

    def settle(self) -> None:
        """With --wait-quiet, wait (bounded) for other processes to leave the CPUs idle."""
        if self.quiet_wait > 0:
            with self.monitor.paused():
                wait_quiet(QUIET_SHARE, self.quiet_wait)

    def measure(self, metric: Metric, run: Callable[[System], float]) -> Metric:
        """Every system runs `run` in turn, a warm-up and then `reps` times; the samples go to
        `metric`."""
        for name, samples in interleaved(
            self.systems(), self.reps, run, before=self.settle
        ).items():
            metric.add(name, samples)
        return metric

    def systems(self) -> list[System]:
        pool = self.pool  # fork the Pool before the cluster's client opens a zmq context
        return [self.shardmill, pool, *self.others]

    def close(self) -> None:
        for system in [self._shardmill, self._pool, *self.others]:
            if system is not None:
                system.close()
