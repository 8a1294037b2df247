"""CurveZMQ keys and socket setup: every TCP socket is authenticated and encrypted by default.

`shardmill keygen DIR` writes three key pairs (master, worker, client) and the folders of
public keys the master accepts, one per role (workers/, clients/; admins/ for clients that may
manage every job: see keyring). Each role reads only what it needs from DIR: the master its own
pair and the folders; a worker or client its own pair and `master.key`.
`shardmill keygen --client NAME DIR` (or `--worker NAME`) adds one named identity: its public
key in the folder, and `DIR/handout/client-NAME/` with all that client needs (`--keys` it).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from shardmill.errors import ConfigError
from shardmill.wire.handshake import RefusalLog
from shardmill.wire.keyring import ADMINS, CLIENTS, WORKERS, Gatekeeper, Keyring

log = logging.getLogger(__name__)
ROLES = ("master", "worker", "client")
FOLDER = {"worker": WORKERS, "client": CLIENTS}
HANDOUT = "handout"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def keygen(directory: Path, *, force: bool = False) -> list[Path]:
    """Create master, worker and client key pairs and the master's key folders (the default
    client is an admin: the operator's own). Existing pairs are kept unless `force`."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for folder in (WORKERS, CLIENTS, ADMINS):
        (directory / folder).mkdir(exist_ok=True)
    written = []
    for role in ROLES:
        public = directory / f"{role}.key"
        if force or not public.exists():
            zmq.auth.create_certificates(directory, role)
            os.chmod(directory / f"{role}.key_secret", 0o600)
            written.append(public)
        if role != "master":
            for folder in (FOLDER[role], *((ADMINS,) if role == "client" else ())):
                if force or not (directory / folder / public.name).exists():
                    shutil.copy(public, directory / folder / public.name)
    return written


def add_identity(directory: Path, role: str, name: str) -> Path:
    """A named client or worker: its public key in the master's folder, and a hand-out folder
    holding its pair (as `ROLE.key_secret`) and master.key: `--keys` that folder."""
    if not _NAME.match(name):
        raise ConfigError(
            f"{name!r} is not a usable name: letters, digits, '.', '_' and '-' only "
            "(it becomes a file name)"
        )
    if not (directory / "master.key").exists():
        raise ConfigError(f"{directory} holds no master.key; run `shardmill keygen {directory}`")
    public = directory / FOLDER[role] / f"{name}.key"
    out = directory / HANDOUT / f"{role}-{name}"
    if public.exists() or out.exists():
        raise ConfigError(
            f"{role} {name!r} has a key already ({public} or {out}); remove both to make a "
            "new one (then send the master SIGHUP)"
        )
    out.mkdir(parents=True, mode=0o700)
    zmq.auth.create_certificates(out, role)
    os.chmod(out / f"{role}.key_secret", 0o600)
    shutil.copy(directory / "master.key", out / "master.key")
    public.parent.mkdir(exist_ok=True)
    shutil.copy(out / f"{role}.key", public)
    return out


def default_keys() -> Path:
    """This user's key directory: $XDG_CONFIG_HOME/shardmill/keys (~/.config/shardmill/keys)."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "shardmill" / "keys"


@dataclass(frozen=True)
class Security:
    """How one process secures its sockets: CURVE keys from a directory, or explicitly insecure."""

    keys: Path | None
    insecure: bool = False

    @classmethod
    def resolve(cls, keys: Path | None, insecure: bool, role: str) -> Security:
        """Keys from `keys`, else from this user's default key directory (made by a bare
        `shardmill keygen`), else plaintext only when told `insecure`: never by default."""
        if keys is None and not insecure:
            keys = default_keys()
            if not (keys / "master.key").exists():
                raise ConfigError(
                    f"the {role} has no keys: run `shardmill keygen` once (it writes {keys}, "
                    "which every role on this machine then uses), or `shardmill keygen DIR` "
                    "and pass `--keys DIR` (or set SHARDMILL_KEYS=DIR); on a trusted network "
                    "only, pass --insecure"
                )
        if insecure and keys is None:
            log.warning("%s: --insecure: traffic is plaintext and unauthenticated", role)
        return cls(keys=keys, insecure=keys is None)

    def _pair(self, role: str) -> tuple[bytes, bytes]:
        assert self.keys is not None
        path = self.keys / f"{role}.key_secret"
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot read the {role} key pair {path} ({e}); run `shardmill keygen "
                f"{self.keys}` or point --keys at the directory that holds it"
            ) from e
        if secret is None:
            raise ConfigError(f"{path} holds no secret key; run `shardmill keygen {self.keys}`")
        return public, secret

    def _master_public(self) -> bytes:
        assert self.keys is not None
        path = self.keys / "master.key"
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot read the master's public key {path} ({e}); copy master.key from the "
                "master's key directory"
            ) from e
        return public

    def server(self, sock: zmq.Socket[bytes], port_of: str) -> None:
        """A master socket (before bind): CURVE server whose ZAP domain names the key folder
        it accepts (`workers` or `clients`)."""
        if self.keys is None:
            return
        public, secret = self._pair("master")
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_server = True
        sock.zap_domain = port_of.encode()

    def client(self, sock: zmq.Socket[bytes], role: str) -> None:
        """A worker or client socket: CURVE client of the master (before connect)."""
        if self.keys is None:
            return
        public, secret = self._pair(role)
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_serverkey = self._master_public()

    def peer_server(self, sock: zmq.Socket[bytes]) -> str:
        """A worker's socket that peers fetch from (before bind): CURVE server with the
        worker's own pair; returns its public key (z85) for peers to name, "" when insecure.
        Peers are not told apart by key: a fetch must name its pipeline's secret token."""
        if self.keys is None:
            return ""
        public, secret = self._pair("worker")
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_server = True
        return public.decode()

    def authenticator(
        self, ctx: zmq.Context[zmq.Socket[bytes]], refusals: RefusalLog
    ) -> Gatekeeper | None:
        """The master's ZAP handler over its key folders (see keyring)."""
        if self.keys is None:
            return None
        auth = Gatekeeper(ctx, Keyring(self.keys), refusals)
        auth.start()
        return auth
