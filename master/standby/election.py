"""Who is primary, and its epoch: an etcd lease, a Kubernetes Lease (kubelease.py, the same
rules), or (without an arbiter) `shardmill promote`.

Keys under the election prefix (default "shardmill"): `leader` (the primary's name, on its
lease: it goes when the primary stops renewing), `epoch` (the last primary's epoch, the etcd
revision of its win) and `synced` (the standby that holds every commit, while it does). A
master may win only when no leader holds the key and its state is the newest: it is the
standby in sync, or it was the last primary itself (restarted on its own state dir), or no
master ever was primary. A standby that fell behind never wins on stale state.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, NoReturn, Protocol

from shardmill import exitcodes
from shardmill.config import MasterSettings
from shardmill.errors import ElectionError, SteppedDown
from shardmill.master.standby import etcd
from shardmill.master.standby.etcd import Etcd, absent, delete, equals, held_by, put
from shardmill.master.standby.kubeapi import KubeApi
from shardmill.master.standby.kubelease import LeaseElection

log = logging.getLogger(__name__)
PROMOTE_FILE = "promote"  # `shardmill promote` writes it in the standby's state dir


def step_down(why: str) -> NoReturn:
    """A primary that finds it was replaced stops at once, crash-only: nothing more is
    dispatched, merged or answered, and its state dir stays as its last commit left it."""
    log.critical("stepping down: %s", why)
    print(json.dumps({"event": "stepped_down", "pid": os.getpid(), "why": why}), flush=True)
    os._exit(exitcodes.STEPPED_DOWN)


class Election(Protocol):
    arbiter: str  # what decides, for logs and status

    def campaign(self, *, primary_epoch: int, replica_epoch: int) -> int | None:
        """The epoch when this master just became primary; None while it may not."""

    def check(self, now: float) -> None:
        """Raise SteppedDown unless this primary still holds its lease (renewing it when due)."""

    def set_synced(self, standby: str | None) -> None:
        """Record which standby holds every commit (None: none does, the primary is alone)."""

    def resign(self) -> None:
        """A clean stop: let the standby take over at once."""


class EtcdElection:
    """A lease in etcd, renewed by the primary's loop; it acts only while the lease is surely
    its own: until a margin before the TTL, counted from the last renewal it sent."""

    def __init__(self, client: Etcd, *, prefix: str, name: str, ttl: int) -> None:
        self.etcd, self.name, self.ttl = client, name, ttl
        self.arbiter = f"etcd at {client.url}"
        self.leader, self.epoch_key, self.synced = (f"{prefix}/{k}" for k in _KEYS)
        self.lease: str | None = None
        self.valid_until = 0.0
        self.renew_at = 0.0

    def campaign(self, *, primary_epoch: int, replica_epoch: int) -> int | None:
        sent = time.monotonic()
        if self.lease is None or not self.etcd.keepalive(self.lease):
            self.lease, self.ttl = self.etcd.grant(self.ttl)
        ways: list[list[dict[str, Any]]] = [[absent(self.epoch_key)]]
        if primary_epoch:
            ways.append([equals(self.epoch_key, str(primary_epoch))])
        ways.append([equals(self.synced, self.name)])
        for way in ways:
            won, revision = self.etcd.txn(
                [absent(self.leader), *way], [put(self.leader, self.name, self.lease)]
            )
            if won:
                # The epoch key, and no standby in sync yet, before this master acts.
                mine = [held_by(self.leader, self.lease)]
                self.etcd.txn(mine, [put(self.epoch_key, str(revision)), delete(self.synced)])
                self._renewed(sent)
                return revision
        return None

    def check(self, now: float) -> None:
        if now < self.renew_at:
            return
        assert self.lease is not None, "check() before campaign() won"
        try:
            alive = self.etcd.keepalive(self.lease)
        except ElectionError as e:
            if now < self.valid_until:  # etcd may be back before the lease could end
                log.warning("lease not renewed: %s", e)
                return
            raise SteppedDown(f"the lease could not be renewed in time: {e}") from e
        if not alive:
            raise SteppedDown(f"its lease in {self.arbiter} expired: a standby may have won")
        self._renewed(now)

    def set_synced(self, standby: str | None) -> None:
        assert self.lease is not None
        change = delete(self.synced) if standby is None else put(self.synced, standby)
        try:
            mine, _ = self.etcd.txn([held_by(self.leader, self.lease)], [change])
        except ElectionError as e:
            raise SteppedDown(f"cannot record the standby's state: {e}") from e
        if not mine:
            raise SteppedDown(f"the leader key in {self.arbiter} is no longer this master's")

    def resign(self) -> None:
        if self.lease is not None:
            try:
                self.etcd.revoke(self.lease)
            except ElectionError as e:
                log.warning("lease not revoked (the standby waits for it to expire): %s", e)

    def _renewed(self, sent: float) -> None:
        self.valid_until = sent + self.ttl * 0.75  # a margin for etcd's and our clocks
        self.renew_at = sent + self.ttl / 4


_KEYS = ("leader", "epoch", "synced")


class ManualElection:
    """No arbiter: a standby never takes over by itself. `shardmill promote` makes it primary
    (as PostgreSQL's promote does); the operator makes sure the old primary is gone."""

    arbiter = "shardmill promote (no arbiter)"

    def __init__(self, state_dir: Path, *, standby: bool) -> None:
        self.trigger = state_dir / PROMOTE_FILE
        self.standby = standby

    def campaign(self, *, primary_epoch: int, replica_epoch: int) -> int | None:
        if not self.standby:
            return max(primary_epoch, replica_epoch, 1)  # started as the primary
        if not self.trigger.exists():
            return None
        self.trigger.unlink()
        return max(primary_epoch, replica_epoch) + 1

    def check(self, now: float) -> None:
        return None

    def set_synced(self, standby: str | None) -> None:
        return None

    def resign(self) -> None:
        return None


def make(settings: MasterSettings, *, name: str) -> Election:
    """The election the settings ask for; ConfigError when its arbiter cannot be set up."""
    assert settings.state_dir is not None, "MasterSettings checks it"
    ttl = settings.lease_ttl
    if settings.etcd:
        return EtcdElection(
            etcd.Etcd(settings.etcd), prefix=settings.election_key, name=name, ttl=ttl
        )
    if settings.k8s_lease:
        api = KubeApi(settings.k8s_account, timeout=min(5.0, ttl / 4))
        return LeaseElection(api, lease=settings.k8s_lease, name=name, ttl=ttl)
    return ManualElection(settings.state_dir, standby=settings.standby)
