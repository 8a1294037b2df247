"""What the master's I/O halves share: the brain, each job's data, the state dir, the peers."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

from shardmill.config import MasterSettings
from shardmill.master.brain import events as ev
from shardmill.master.brain.model import Limits, Timing
from shardmill.master.brain.state import MasterState
from shardmill.master.checkpoint import Checkpointer
from shardmill.master.jobs import JobData
from shardmill.master.metrics import Metrics
from shardmill.ops.registry import Registry
from shardmill.wire import shm
from shardmill.wire.codec import encode, encode_header
from shardmill.wire.protocol import Message, Ready
from shardmill.wire.security import Security

if TYPE_CHECKING:
    from shardmill.master.pipelines import Pipelines

log = logging.getLogger(__name__)
Apply = Callable[[ev.Event], list[ev.Command]]


@dataclass
class Peers:
    """What the loop knows of each worker beyond the brain: its READY, and whether it can map
    the master's shared-memory segments."""

    hello: dict[str, Ready] = field(default_factory=dict)
    shares_memory: set[str] = field(default_factory=set)
    keys: dict[str, str] = field(default_factory=dict)  # worker -> the key it registered with
    shuffle: dict[str, int] = field(default_factory=dict)  # worker -> map output bytes held
    usage: dict[str, tuple[float, int]] = field(default_factory=dict)  # worker -> (cpu %, rss)

    def forget(self, worker: str) -> None:
        """A worker gone (disconnected, expired, revoked): its READY and key binding with it."""
        self.hello.pop(worker, None)
        self.keys.pop(worker, None)
        self.shuffle.pop(worker, None)
        self.usage.pop(worker, None)


@dataclass
class Core:
    """Built once by the loop and handed to the client and worker message handlers."""

    settings: MasterSettings
    brain: MasterState
    checkpoint: Checkpointer
    registry: Registry
    segments: shm.Segments
    data: dict[str, JobData]  # per job, beside the brain's record: descriptors, merger, waiters
    peers: Peers
    metrics: Metrics
    apply: Apply  # feed the brain one event and carry out its commands; returns them
    # Set by the loop once its sockets exist: a message to a client, or to a worker.
    to_client: Callable[[bytes, Message], None] = lambda identity, msg: None
    to_worker: Callable[[str, Message], None] = lambda worker, msg: None
    pipelines: Pipelines | None = None  # set by the loop once it is built
    # This master's term as primary (docs/standby.md), stamped on what it sends; 0 alone.
    epoch: int = 0
    standby: str = ""  # "in sync: NAME" or "alone: WHY" with a standby configured

    def waited_on(self) -> frozenset[str]:
        """Jobs a client waits for: never pruned before it has its answer."""
        return frozenset(j for j, d in self.data.items() if d.waiters)


def send(
    sock: zmq.Socket[bytes], identity: bytes, msg: Message, arrays: Sequence[Any] = ()
) -> None:
    """One message to one peer; a peer gone or with a full queue is left to heartbeats."""
    try:
        sock.send_multipart([identity, *encode(msg, arrays)], zmq.NOBLOCK, copy=False)
    except zmq.ZMQError as e:
        log.debug("cannot send %s to %s: %s", msg.kind, identity.hex(), e)


def send_header(sock: zmq.Socket[bytes], identity: bytes, header: dict[str, Any]) -> None:
    """As `send`, for a message already dumped to plain data."""
    try:
        sock.send_multipart([identity, *encode_header(header)], zmq.NOBLOCK, copy=False)
    except zmq.ZMQError as e:
        log.debug("cannot send %s to %s: %s", header.get("kind"), identity.hex(), e)


def bind_router(
    ctx: zmq.Context[zmq.Socket[bytes]], settings: MasterSettings, security: Security, port_of: str
) -> zmq.Socket[bytes]:
    """One of the master's two listening sockets (`workers` or `clients`), bound."""
    sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # A worker that reconnects keeps its identity: the new connection takes it over.
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    # Clients: the hard cut (the peer is disconnected) sits above the soft limit, which gets a
    # clear error reply instead. Workers: at the limit itself (an authenticated worker must not
    # make the master buffer a frame of any size); they fail a larger result themselves.
    limit = settings.max_message_bytes
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * limit if port_of == "clients" else limit + 4096)
    security.server(sock, port_of)  # its ZAP domain: the key folder this port accepts
    port = settings.port if port_of == "workers" else settings.client_port
    if port == 0:
        sock.bind_to_random_port(f"tcp://{settings.host}")
    else:
        sock.bind(f"tcp://{settings.host}:{port}")
    return sock


def user_id(frame: Any) -> str:
    """The peer's CURVE public key as ZAP set it; empty on insecure sockets."""
    try:
        return str(frame.get("User-Id") or "")
    except (zmq.ZMQError, AttributeError):
        return ""


def new_brain(settings: MasterSettings) -> MasterState:
    """The state machine, with the timing and limits the settings give."""
    timing = Timing(
        heartbeat_interval=settings.heartbeat_interval,
        heartbeat_liveness=settings.heartbeat_liveness,
        retry_backoff=settings.retry_backoff,
        retry_backoff_max=settings.retry_backoff_max,
        prefetch_below=settings.prefetch_below,
        speculate_after=settings.speculate_after,
        speculate_min_age=settings.speculate_min_age,
    )
    limits = Limits(
        max_shards=settings.max_shards,
        max_queued_jobs=settings.max_queued_jobs,
        finished_kept=settings.finished_jobs_kept,
        finished_bytes=settings.finished_bytes_kept,
    )
    return MasterState(timing, limits=limits, wall_offset=time.time() - time.monotonic())


def new_segments(settings: MasterSettings) -> shm.Segments:
    """By-value inputs clients left in /dev/shm, and a pool of used segments for reuse."""
    segments = shm.Segments(settings.shm_pool_bytes, settings.shm_pool_idle)
    if settings.state_dir is not None:  # we hold its lock: leftovers are a killed master's
        path = str(settings.state_dir.resolve()).encode()
        segments.tag = hashlib.sha256(path).hexdigest()[:8]
        if gone := segments.remove_leftovers():
            log.info("removed %d shared-memory segments a previous master left", len(gone))
    return segments
