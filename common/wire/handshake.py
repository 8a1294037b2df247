"""Handshake outcomes: a refused key or a CURVE/plaintext mix-up is named at once, not silence.

libzmq reports a failed handshake only through the socket monitor. `HandshakeWatch` reads those
events for a connecting socket (client, worker) and turns them into one sentence with the fix;
`RefusalLog` is the master's rate-limited log of peers it refused (its ZAP handler, in keyring,
knows the peer's address and key where the monitor knows neither).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger(__name__)

FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
WATCHED = FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED
# A CURVE client whose master.key is not the master's (the master cannot open its HELLO), or
# one whose master runs plaintext and hung up first, sees only a failure with no detail. So
# does one whose master is restarting behind a proxy that accepts and closes (docker-proxy): a
# peer that has met this master before is never told its keys are wrong by that alone, and a
# new one only after this many in a row. A plaintext peer whose CURVE master hangs up on its
# greeting before it has read the master's sees the same: after as many, that is its mismatch.
NO_DETAIL_LIMIT = 3
# Connections refused (nothing listening) for this long, and never one accepted: say so rather
# than wait out the whole connect timeout. A master that is starting binds well within it.
REFUSED_GRACE = 0.5


def fingerprint(public_z85: bytes) -> str:
    """A short, stable name for a public key, printed by both ends so logs can be matched."""
    return hashlib.sha256(public_z85).hexdigest()[:12]


def key_fingerprint(path: Path) -> str:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError):
        return "unknown: the file cannot be read"
    return fingerprint(public)


class HandshakeWatch:
    """Watches one connecting socket's handshakes; `check()` names a failure that will not pass."""

    def __init__(
        self, sock: zmq.Socket[bytes], *, role: str, keys: Path | None, met: bool = False
    ) -> None:
        self.sock = sock
        self.met = met  # a handshake with this master succeeded once: our keys are right
        self.role = role
        self.keys = keys
        self.monitor: zmq.Socket[bytes] = sock.get_monitor_socket(WATCHED)
        self._no_detail = 0
        self.reached = False  # a TCP connection was accepted at the address
        self.refused_since: float | None = None  # first refused connect, while none was accepted

    def check(self) -> str | None:
        """Read the pending events; a sentence naming the problem and the fix, or None."""
        while self.monitor.poll(0):
            event = parse_monitor_message(self.monitor.recv_multipart())
            if problem := self._judge(event["event"], event["value"]):
                return problem
        return None

    def nothing_listening(self) -> bool:
        """Every connect so far was refused, for REFUSED_GRACE seconds at least."""
        since = self.refused_since
        return since is not None and not self.reached and time.monotonic() - since >= REFUSED_GRACE

    def _connection(self, event: int) -> None:
        if event == zmq.EVENT_CONNECTED:
            self.reached = True
        elif event == zmq.EVENT_CONNECT_RETRIED and self.refused_since is None:
            self.refused_since = time.monotonic()

    def _judge(self, event: int, value: int) -> str | None:
        if event & (zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED):
            self._connection(event)
            return None
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._no_detail = 0
            self.met = True
            return None
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return self._refused()
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                return self._mismatch()
            if self.keys is not None and not self.met:  # keys that never worked here
                return self._wrong_master_key()
            return None
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and not self.met:
            self._no_detail += 1
            if self._no_detail >= NO_DETAIL_LIMIT:
                return self._wrong_master_key() if self.keys is not None else self._mismatch()
        return None

    def _refused(self) -> str:
        if self.keys is None:
            return f"the master refused this {self.role} (ZAP); give it keys the master accepts"
        public = self.keys / f"{self.role}.key"
        return (
            f"the master refused this {self.role}'s key ({public}, fingerprint "
            f"{key_fingerprint(public)}) on this port: it is not in the master's "
            f"{self.role}s/ folder (a {self.role} needs a {self.role} key: a worker's key opens "
            f"only the worker port, a client's only the client port). Copy {public.name} into "
            f"the master's KEYS/{self.role}s/ and send the master SIGHUP, or use a key made "
            f"with `shardmill keygen --{self.role} NAME KEYS`"
        )

    def _mismatch(self) -> str:
        if self.keys is None:
            return (
                f"the master uses CURVE and this {self.role} runs --insecure: give it keys "
                "(--keys DIR or SHARDMILL_KEYS, a directory from `shardmill keygen` holding "
                f"the master's master.key and a {self.role} key pair the master authorized)"
            )
        return (
            f"the master is not using CURVE (it runs --insecure) and this {self.role} has keys "
            f"({self.keys}): start the master with the same --keys, or, on a trusted network "
            f"only, run this {self.role} with --insecure too"
        )

    def _wrong_master_key(self) -> str:
        assert self.keys is not None
        return (
            f"the master did not accept this {self.role}'s CURVE handshake: either "
            f"{self.keys / 'master.key'} is not the public key of the master at this address "
            "(copy master.key from the master's key directory), or the master runs --insecure "
            "(start it with the same --keys); a master restarting behind a proxy looks the "
            "same for a moment, so if it is, try again"
        )

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)


class RefusalLog:
    """The master's log of refused peers: one line per peer and reason per `every` seconds
    (at most MAX_PEERS remembered: a peer cycling keys cannot grow it)."""

    MAX_PEERS = 1000

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self._last: dict[tuple[str, str], float] = {}
        self._quiet: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()  # the ZAP thread and the poll loop both report

    def refused(self, peer: str, reason: str) -> None:
        key = (peer, reason)
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.every) < self.every:
                self._quiet[key] = self._quiet.get(key, 0) + 1
                return
            if len(self._last) >= self.MAX_PEERS and key not in self._last:
                oldest = next(iter(self._last))
                del self._last[oldest]
                self._quiet.pop(oldest, None)
            self._last[key] = now
            quiet = self._quiet.pop(key, 0)
        more = f" ({quiet} more since the last line)" if quiet else ""
        log.warning("refused %s: %s%s", peer, reason, more)


class PortWatch:
    """Watches one of the master's listening sockets for handshakes that failed before ZAP."""

    def __init__(
        self, sock: zmq.Socket[bytes], *, name: str, insecure: bool, refusals: RefusalLog
    ) -> None:
        self.sock = sock
        self.name = name
        self.insecure = insecure
        self.refusals = refusals
        self.monitor: zmq.Socket[bytes] = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        )

    def check(self) -> None:
        while self.monitor.poll(0):
            event = parse_monitor_message(self.monitor.recv_multipart())
            if reason := mismatch_reason(self.insecure, event["value"]):
                port = event["endpoint"].decode(errors="replace")
                self.refusals.refused(f"a peer on the {self.name} port {port}", reason)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)


def unreachable(address: str, what: str, *, role: str = "client") -> str:
    """The sentence for a master that does not answer: the address tried and how to change it."""
    port, env = (
        ("5556", "SHARDMILL_MASTER") if role == "client" else ("5555", "SHARDMILL_WORKER_MASTER")
    )
    return (
        f"no answer from the master at {address}: {what}; is it running, and is this its "
        f"{role} port? Point the {role} at it with --master tcp://HOST:{port} or {env}"
    )


def mismatch_reason(insecure: bool, value: int) -> str | None:
    """What a failed handshake seen on one of the master's ports means, or None to stay quiet."""
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        if insecure:
            return (
                "it uses CURVE, but this master runs --insecure; start the master with --keys, "
                "or run that peer with --insecure"
            )
        return (
            "it has no keys (--insecure), but this master uses CURVE; give it keys from this "
            "master's key directory"
        )
    if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return "it holds another master's public key; copy this master's master.key to it"
    return None


__all__ = [
    "HandshakeWatch",
    "PortWatch",
    "RefusalLog",
    "fingerprint",
    "key_fingerprint",
    "mismatch_reason",
    "unreachable",
]
