"""CurveZMQ keys and socket setup: every TCP socket is authenticated and encrypted by default.

`shardmill keygen DIR` writes three key pairs (master, worker, client) and `DIR/authorized/`,
the public keys the master accepts. Each role reads only what it needs from DIR:
the master its own pair and `authorized/`; a worker or client its own pair and `master.key`.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from shardmill.errors import ConfigError
from shardmill.wire.handshake import Gatekeeper, RefusalLog

log = logging.getLogger(__name__)
ROLES = ("master", "worker", "client")
AUTHORIZED = "authorized"


def keygen(directory: Path, *, force: bool = False) -> list[Path]:
    """Create master, worker and client key pairs and the master's authorized directory."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    authorized = directory / AUTHORIZED
    authorized.mkdir(exist_ok=True)
    written = []
    for role in ROLES:
        public = directory / f"{role}.key"
        if public.exists() and not force:
            continue
        zmq.auth.create_certificates(directory, role)
        os.chmod(directory / f"{role}.key_secret", 0o600)
        written.append(public)
        if role != "master":
            shutil.copy(public, authorized / public.name)
    return written


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

    def server(self, sock: zmq.Socket[bytes]) -> None:
        """A master socket: CURVE server (before bind)."""
        if self.keys is None:
            return
        public, secret = self._pair("master")
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_server = True

    def client(self, sock: zmq.Socket[bytes], role: str) -> None:
        """A worker or client socket: CURVE client of the master (before connect)."""
        if self.keys is None:
            return
        public, secret = self._pair(role)
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_serverkey = self._master_public()

    def authenticator(
        self, ctx: zmq.Context[zmq.Socket[bytes]], refusals: RefusalLog
    ) -> Gatekeeper | None:
        """The master's ZAP handler: only public keys in `authorized/` may connect."""
        if self.keys is None:
            return None
        authorized = self.keys / AUTHORIZED
        if not authorized.is_dir():
            raise ConfigError(f"{authorized} is missing; run `shardmill keygen {self.keys}`")
        auth = Gatekeeper(ctx, authorized, refusals)
        auth.start()
        return auth
