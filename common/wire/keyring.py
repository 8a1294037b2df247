"""Who may connect, on which port, as whom: the master's key folders and its ZAP handler.

A master's key directory (made by `shardmill keygen DIR`) holds its own pair and three folders
of public keys, one identity per file, named by the file's stem:

    workers/NAME.key   may connect to the worker port only
    clients/NAME.key   may connect to the client port only; NAME owns the jobs it submits
    admins/NAME.key    clients that may also cancel and prune other clients' jobs
    pickle/NAME.key    clients that may send pickled calls (trusted clusters; workers must
                       also run with --allow-pickle)

A worker's key never opens the client port (whoever takes over one worker host cannot submit,
cancel or prune), nor a client's the worker port. `Keyring.load` reads the folders again, so a
SIGHUP to the master revokes a deleted key at once: new connections are refused by the ZAP
handler, and every request is checked against the current folders (a connection made before
the revocation gets no further answer).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from shardmill.errors import ConfigError
from shardmill.wire.handshake import RefusalLog, fingerprint

WORKERS, CLIENTS, ADMINS, PICKLE = "workers", "clients", "admins", "pickle"
OPTIONAL = (ADMINS, PICKLE)  # permissions beside a client's key: none when the folder is absent
PORT_OF = {WORKERS: "worker", CLIENTS: "client"}  # ZAP domain -> the port's name
LEGACY = "authorized"  # round 1: one folder for every role


@dataclass(frozen=True)
class Keys:
    """One reading of the folders: z85 public key -> identity name, per folder."""

    folders: dict[str, dict[bytes, str]] = field(default_factory=dict)

    def name(self, folder: str, key: bytes) -> str | None:
        return self.folders.get(folder, {}).get(key)


class Keyring:
    """The master's view of its key folders; `load()` again to pick up added or deleted keys."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._lock = threading.Lock()  # read by the ZAP thread, replaced by the loop
        self._keys = self._read()

    def load(self) -> dict[str, int]:
        """Read the folders again; how many keys each now holds."""
        keys = self._read()
        with self._lock:
            self._keys = keys
        return {folder: len(found) for folder, found in keys.folders.items()}

    @property
    def keys(self) -> Keys:
        with self._lock:
            return self._keys

    def client(self, user_id: str) -> str | None:
        """The client's name for a ZAP User-Id (its z85 key), or None once it is revoked."""
        return self.keys.name(CLIENTS, user_id.encode())

    def is_admin(self, user_id: str) -> bool:
        return self.keys.name(ADMINS, user_id.encode()) is not None

    def may_pickle(self, user_id: str) -> bool:
        """Whether this client may send pickled calls (its key is also in pickle/)."""
        return self.keys.name(PICKLE, user_id.encode()) is not None

    def owner_name(self, user_id: str) -> str:
        """How `jobs` shows a job's owner: its name, or its key's fingerprint once revoked."""
        if not user_id:
            return ""
        return self.client(user_id) or f"revoked key {fingerprint(user_id.encode())}"

    def _read(self) -> Keys:
        folders: dict[str, dict[bytes, str]] = {}
        for folder in (WORKERS, CLIENTS, *OPTIONAL):
            path = self.dir / folder
            if not path.is_dir():
                if folder in OPTIONAL:
                    folders[folder] = {}
                    continue
                raise ConfigError(_missing(self.dir, path))
            folders[folder] = _public_keys(path)
        return Keys(folders)


def _missing(keys: Path, path: Path) -> str:
    if (keys / LEGACY).is_dir():
        return (
            f"{keys} has the round-1 layout ({LEGACY}/ for every role): workers and clients now "
            f"have folders of their own; run `shardmill keygen {keys}` once to add {WORKERS}/ "
            f"and {CLIENTS}/ from the pairs already there"
        )
    return f"{path} is missing; run `shardmill keygen {keys}`"


def _public_keys(folder: Path) -> dict[bytes, str]:
    found = {}
    for path in sorted(folder.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"{path} is not a public key ({e}); copy a .key file made by `shardmill keygen`"
            ) from e
        found[public] = path.stem
    return found


class Gatekeeper(ThreadAuthenticator):
    """The master's ZAP handler: a key may connect only to the port its folder names; each
    refusal is logged with the peer's address, key fingerprint and, for a key of the other
    role, which role it is."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], keyring: Keyring, refusals: RefusalLog
    ) -> None:
        super().__init__(ctx)
        self.keyring = keyring
        self.refusals = refusals
        self._peer = "?"

    def start(self) -> None:
        super().start()
        for folder in PORT_OF:  # each port's socket asks ZAP in its own domain
            self.configure_curve_callback(domain=folder, credentials_provider=self)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._peer = msg[3].decode(errors="replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    def callback(self, domain: Any, key: Any) -> bool:
        """pyzmq's credentials-provider hook: may this z85 public key use this port?"""
        folder = domain.decode() if isinstance(domain, bytes) else str(domain)
        keys = self.keyring.keys
        if keys.name(folder, key) is not None:
            return True
        port = PORT_OF.get(folder, folder)
        other = next((f for f in PORT_OF if f != folder and keys.name(f, key)), None)
        if other is not None:
            reason = (
                f"it offered a {PORT_OF[other]}'s key ({keys.name(other, key)}) on the {port} "
                f"port: a {PORT_OF[other]} key opens only the {PORT_OF[other]} port; give this "
                f"peer a {port} key (`shardmill keygen --{port} NAME KEYS`)"
            )
        else:
            reason = (
                f"its public key is not in {folder}/; add its .key file there and send the "
                "master SIGHUP"
            )
        peer = f"a peer at {self._peer or '?'} (key fingerprint {fingerprint(key)})"
        self.refusals.refused(peer, reason)
        return False
