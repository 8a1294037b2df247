"""A master with a standby: standby until it wins the election, then primary until replaced."""

from __future__ import annotations

import logging
import os
import socket

import zmq

from shardmill.config import MasterSettings
from shardmill.errors import ConfigError, ElectionError
from shardmill.master.standby.election import make
from shardmill.master.standby.journal import meta_epoch
from shardmill.master.standby.primary import PrimaryLoop
from shardmill.master.standby.replica import Standby
from shardmill.ops.registry import Registry
from shardmill.wire.security import Security

log = logging.getLogger(__name__)


def primary_loop(settings: MasterSettings, registry: Registry) -> PrimaryLoop | None:
    """The loop to run once this master is primary; None when stopped while standby."""
    assert settings.peer, "process.serve checks it"
    settings = settings.model_copy(update={"peer": the_other(settings.peer)})
    assert settings.state_dir is not None, "MasterSettings checks it"
    name = settings.name or f"{socket.gethostname()}-{os.getpid()}"
    election = make(settings, name=name)
    try:  # the last primary, restarted on its own state, or the first master ever
        epoch = election.campaign(
            primary_epoch=meta_epoch(settings.state_dir, "primary_epoch"),
            replica_epoch=meta_epoch(settings.state_dir, "epoch"),
        )
    except ElectionError as e:
        log.warning("%s; waiting as a standby", e)
        epoch = None
    if epoch is None:
        security = Security.resolve(settings.keys, settings.insecure, "master")
        standby = Standby(settings, security, zmq.Context.instance(), name=name)
        epoch = standby.wait_to_win(election)
        if epoch is None:
            return None
        log.info("standby %s takes over as primary, epoch %d", name, epoch)
    return PrimaryLoop(settings, registry, election=election, epoch=epoch)


def the_other(peer: str, host: str | None = None) -> str:
    """The other master's address. `--peer` may list both masters of a pair (one manifest for
    both, as a StatefulSet's pods share one template): the one on this host is skipped, by
    the first label of its host name (a StatefulSet pod's host name is the pod's name)."""
    addresses = peer.split(",")
    if len(addresses) == 1:
        return peer
    host = (host or socket.gethostname()).split(".")[0]
    others = [a for a in addresses if _host(a).split(".")[0] != host]
    if len(others) != 1:
        raise ConfigError(
            f"--peer {peer} lists two masters, and {'none' if others else 'both'} of them "
            f"is this host ({host}): name each by its host name (shardmill-master-0."
            "shardmill-master), or give only the other master's address"
        )
    return others[0]


def _host(address: str) -> str:
    """tcp://HOST:PORT -> HOST (an [IPv6] literal stays in brackets)."""
    return address.removeprefix("tcp://").rpartition(":")[0]
