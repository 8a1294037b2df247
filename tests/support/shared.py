"""One cluster per test module, settled before each test: cluster set-up is seconds, a test often
less. A test that kills or stops a role asks for `fresh_cluster` instead; should one break the
shared cluster anyway (a role gone, a worker that will not come back idle), the next test gets a
new one rather than a broken one."""

from __future__ import annotations

from collections.abc import Callable

from helpers import wait_until

from shardmill import LocalCluster
from shardmill.errors import ShardmillError

ENDED = {"done", "failed", "cancelled"}


def warm(cluster: LocalCluster) -> LocalCluster:
    """Both children ready (imports done): a shard leased before that waits in its agent, which
    the fault tests' timing (a signal "mid-shard") must not depend on."""
    with cluster.client() as client:
        job = client.map("sm_tasks:square", [(i,) for i in range(4)], chunk_size=1)
        assert job.result(timeout=60) == [0, 1, 4, 9]
        client.prune(0)  # tests start with no jobs
    return cluster


class SharedCluster:
    def __init__(self, make: Callable[[], LocalCluster]) -> None:
        self.make = make
        self.current: LocalCluster | None = None

    def get(self) -> LocalCluster:
        if self.current is not None and not self._settled(self.current):
            self.current.stop()
            self.current = None
        if self.current is None:
            self.current = warm(self.make().start())
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()

    @staticmethod
    def _settled(c: LocalCluster) -> bool:
        """No job left running, every worker registered and idle, no job remembered."""
        if c.master is None or c.master.poll() is not None:
            return False
        c.workers = [w for w in c.workers if w.poll() is None]  # e.g. a refused extra worker
        if len(c.workers) < c.n_workers:
            return False
        try:
            with c.client(connect_timeout=5) as client:
                for job in client.jobs():
                    if job.state not in ENDED:
                        client.cancel(job.job_id)

                def idle() -> bool:
                    workers = client.workers()
                    return len(workers) == c.n_workers and all(
                        w.busy == 0 and w.queued == 0 for w in workers
                    )

                wait_until(idle, timeout=10, what="the shared cluster to settle")
                client.prune(0)
        except (AssertionError, ShardmillError):
            return False
        return True
