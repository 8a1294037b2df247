"""etcd's v3 API over its HTTP/JSON gateway (keys and values travel base64): just what an
election needs. No client library: the gateway is plain JSON, and etcd is the arbiter, never
code of ours."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

from shardmill.errors import ElectionError


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


class Etcd:
    """One etcd endpoint (http://HOST:2379); each call a short POST with a timeout."""

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to /v3/`path`; ElectionError naming etcd and the fix when it fails."""
        req = urllib.request.Request(
            f"{self.url}/v3/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply: dict[str, Any] = json.loads(resp.read() or b"{}")
        except (OSError, ValueError) as e:  # URLError, a timeout, a reply that is not JSON
            raise ElectionError(
                f"etcd at {self.url} did not answer /v3/{path} ({e}); is etcd running there? "
                "Point the masters at it with --etcd http://HOST:2379"
            ) from e
        return reply

    def grant(self, ttl: int) -> tuple[str, int]:
        """A new lease: its id and the TTL etcd gave (at least its minimum, 2 s)."""
        reply = self.call("lease/grant", {"TTL": ttl})
        return str(reply["ID"]), int(reply.get("TTL", ttl))

    def keepalive(self, lease: str) -> bool:
        """Renew the lease; False when etcd no longer has it (it expired)."""
        reply = self.call("lease/keepalive", {"ID": lease})
        return int(reply.get("result", {}).get("TTL", 0)) > 0

    def revoke(self, lease: str) -> None:
        self.call("lease/revoke", {"ID": lease})

    def get(self, key: str) -> str | None:
        kvs = self.call("kv/range", {"key": b64(key)}).get("kvs", [])
        return unb64(kvs[0].get("value", "")) if kvs else None

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> tuple[bool, int]:
        """A transaction: whether the compares held (then `success` ran), and the revision."""
        reply = self.call("kv/txn", {"compare": compare, "success": success})
        return bool(reply.get("succeeded")), int(reply["header"]["revision"])


def absent(key: str) -> dict[str, Any]:
    return {"key": b64(key), "target": "CREATE", "create_revision": "0"}


def equals(key: str, value: str) -> dict[str, Any]:
    return {"key": b64(key), "target": "VALUE", "value": b64(value)}


def held_by(key: str, lease: str) -> dict[str, Any]:
    return {"key": b64(key), "target": "LEASE", "lease": lease}


def put(key: str, value: str, lease: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease is not None:
        body["lease"] = lease
    return {"request_put": body}


def delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}
