"""Who is primary, by a coordination.k8s.io/v1 Lease: the same rules as the etcd election.

The Lease's `holderIdentity` is the primary's name; `leaseTransitions` is the epoch (one more
on every takeover, and above any epoch the winner's own state has seen); the annotation
`shardmill.io/synced` names the standby that holds every commit, while it does. Every write is
a compare-and-swap on `metadata.resourceVersion`: of two masters that read the same Lease only
one write succeeds, the other gets 409 Conflict and has lost.

Expiry is judged as client-go's leader election judges it, by this master's own clock: a
Lease is free once its resourceVersion has not changed for `leaseDurationSeconds` since this
master first saw it (the primary renews every TTL/4), or when it names no holder (a clean
resign). Clocks on two nodes never have to agree, only to run at about the same rate.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shardmill.errors import ElectionError, SteppedDown
from shardmill.master.standby.kubeapi import KubeApi, LeaseConflict, Obj

log = logging.getLogger(__name__)
SYNCED = "shardmill.io/synced"


class LeaseElection:
    """A Kubernetes Lease, renewed by the primary's loop; it acts only while the Lease is surely
    its own: until a margin before the TTL, counted from the last write it sent."""

    def __init__(self, api: KubeApi, *, lease: str, name: str, ttl: int) -> None:
        self.api, self.lease, self.name, self.ttl = api, lease, name, ttl
        self.arbiter = f"the Kubernetes Lease {api.namespace}/{lease}"
        self.every = ttl / 4  # how often a standby reads the Lease, and the primary renews it
        self.seen = ("", 0.0)  # the resourceVersion last read, and when it was first read
        self.next_read = 0.0
        self.mine: Obj | None = None  # the Lease as this primary last wrote it
        self.epoch = 0
        self.valid_until = 0.0
        self.renew_at = 0.0

    def campaign(self, *, primary_epoch: int, replica_epoch: int) -> int | None:
        if time.monotonic() < self.next_read:
            return None
        sent = time.monotonic()
        self.next_read = sent + self.every
        lease = self.api.get(self.lease)
        if lease is None:
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {}}
            lease["metadata"] = {"name": self.lease}
        elif self._held(lease, time.monotonic()) or not self._newest(lease, primary_epoch):
            return None
        epoch = max(_epoch(lease), primary_epoch, replica_epoch) + 1
        taken = copy.deepcopy(lease)
        taken.setdefault("metadata", {}).get("annotations", {}).pop(SYNCED, None)
        taken.setdefault("spec", {}).update(
            holderIdentity=self.name,
            leaseDurationSeconds=self.ttl,
            acquireTime=_stamp(),
            renewTime=_stamp(),
            leaseTransitions=epoch,
        )
        write = self.api.replace if "resourceVersion" in lease["metadata"] else self.api.create
        try:
            self.mine = write(taken)
        except LeaseConflict:  # another master wrote first: it won
            return None
        self.epoch = epoch
        self._renewed(sent)
        return epoch

    def _held(self, lease: Obj, now: float) -> bool:
        """Whether a live primary holds the Lease (its resourceVersion changed within its
        duration); notes when to read it next."""
        spec = lease.get("spec", {})
        if not spec.get("holderIdentity"):
            return False
        version = lease["metadata"].get("resourceVersion", "")
        if version != self.seen[0]:
            self.seen = (version, now)
        ends = self.seen[1] + int(spec.get("leaseDurationSeconds") or self.ttl)
        self.next_read = min(self.next_read, ends)
        return now < ends

    def _newest(self, lease: Obj, primary_epoch: int) -> bool:
        """Whether this master's state is the newest: no master was ever primary, or it was the
        last primary itself (restarted on its own state dir), or it is the standby in sync."""
        epoch = _epoch(lease)
        synced = lease["metadata"].get("annotations", {}).get(SYNCED)
        return epoch == 0 or (primary_epoch != 0 and epoch == primary_epoch) or synced == self.name

    def check(self, now: float) -> None:
        if now < self.renew_at:
            return
        try:
            self._write(lambda lease: None, sent=now)
        except SteppedDown:
            raise
        except ElectionError as e:
            if now < self.valid_until:  # the API server may be back before the lease could end
                log.warning("lease not renewed: %s", e)
                return
            raise SteppedDown(f"the lease could not be renewed in time: {e}") from e

    def set_synced(self, standby: str | None) -> None:
        def note(lease: Obj) -> None:
            notes = lease["metadata"].setdefault("annotations", {})
            if standby is None:
                notes.pop(SYNCED, None)
            else:
                notes[SYNCED] = standby

        try:
            self._write(note, sent=time.monotonic())
        except SteppedDown:
            raise
        except ElectionError as e:
            raise SteppedDown(f"cannot record the standby's state: {e}") from e

    def _write(self, change: Callable[[Obj], None], *, sent: float) -> None:
        """Change the Lease and renew it, while it is this primary's; SteppedDown once it is
        not (a 409 is re-read: someone may only have annotated it)."""
        assert self.mine is not None, "a write before campaign() won"
        for _ in range(3):
            lease = copy.deepcopy(self.mine)
            change(lease)
            lease["spec"]["renewTime"] = _stamp()
            try:
                self.mine = self.api.replace(lease)
            except LeaseConflict:
                self._reread()
                continue
            self._renewed(sent)
            return
        raise ElectionError(f"{self.arbiter} kept changing under this master")

    def _reread(self) -> None:
        lease = self.api.get(self.lease)
        spec = (lease or {}).get("spec", {})
        if lease is None or spec.get("holderIdentity") != self.name or _epoch(lease) != self.epoch:
            holder = spec.get("holderIdentity") or "no one"
            raise SteppedDown(
                f"{self.arbiter} is held by {holder} for epoch {_epoch(lease or {})}, not this "
                f"master for epoch {self.epoch}: a standby won"
            )
        self.mine = lease

    def resign(self) -> None:
        """Give the Lease up at once (holder cleared, as client-go's release does)."""
        if self.mine is None:
            return
        lease = copy.deepcopy(self.mine)
        lease["spec"].pop("holderIdentity", None)
        lease["spec"].update(leaseDurationSeconds=1, renewTime=_stamp())
        try:
            self.api.replace(lease)
        except ElectionError as e:
            log.warning("lease not given up (the standby waits for it to expire): %s", e)

    def _renewed(self, sent: float) -> None:
        self.valid_until = sent + self.ttl * 0.75  # a margin for the two clocks' rates
        self.renew_at = sent + self.every


def _epoch(lease: dict[str, Any]) -> int:
    return int(lease.get("spec", {}).get("leaseTransitions") or 0)


def _stamp() -> str:
    """Now as a Kubernetes MicroTime."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
