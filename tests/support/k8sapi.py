"""A stand-in for the Kubernetes API server's Lease endpoints, because no API server can run
on this machine (no cluster, no kube-apiserver binary, no container runtime for kind).

It serves only what an election calls, over HTTPS with a bearer token, with the semantics the
Kubernetes API documents for coordination.k8s.io/v1 Leases: GET answers 404 (a Status) for a
Lease that does not exist; POST creates one (409 AlreadyExists when the name is taken); PUT
replaces one only when the body's metadata.resourceVersion is the stored one (409 Conflict
otherwise: "the object has been modified"), and every write gives a new resourceVersion. A
wrong token gets 401; a verb listed in `forbid` gets 403 as RBAC words it. Nothing else of the
API server (watch, validation of every field, admission, server-side apply) is here.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sysprog import ensure

Obj = dict[str, Any]
PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/?]+))?$")
GROUP = "leases.coordination.k8s.io"


class LeaseApi:
    """The stand-in on 127.0.0.1, and a service-account folder (token, ca.crt, namespace) as
    the kubelet mounts one; `env()` points a master at both."""

    def __init__(self, base: Path, *, namespace: str = "shardmill") -> None:
        (openssl,) = ensure(["openssl"], ["openssl"])
        base.mkdir(parents=True)
        self.account, self.namespace, self.token = base / "account", namespace, "t0ken-of-pod"
        self.account.mkdir()
        cert, key = self.account / "ca.crt", base / "server.key"
        request = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        request += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
        request += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        subprocess.run([openssl, *request], check=True, capture_output=True)
        (self.account / "token").write_text(self.token + "\n")
        (self.account / "namespace").write_text(namespace)
        self.leases: dict[tuple[str, str], Obj] = {}
        self.writes: list[Obj] = []  # every stored version, in order
        self.conflicts = 0
        self.forbid: set[str] = set()  # verbs answered 403
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.api = self  # type: ignore[attr-defined]
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def env(self) -> dict[str, str]:
        return {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.port),
            "SHARDMILL_MASTER_K8S_ACCOUNT": str(self.account),
        }

    def lease(self, name: str) -> Obj | None:
        with self.lock:
            found = self.leases.get((self.namespace, name))
            return json.loads(json.dumps(found)) if found else None

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def handle(self, method: str, path: str, token: str, body: Obj | None) -> tuple[int, Obj]:
        """The status and object (or Status) a request gets."""
        match = PATH.match(path)
        if match is None:
            return _status(404, "NotFound", f"the server could not find {path}")
        if token != self.token:
            return _status(401, "Unauthorized", "Unauthorized")
        namespace, name = match.groups()
        verb = {"GET": "get", "POST": "create", "PUT": "update"}.get(method, "")
        if verb in self.forbid:
            user = f"system:serviceaccount:{namespace}:default"
            return _status(
                403,
                "Forbidden",
                f'{GROUP} "{name or ""}" is forbidden: User "{user}" cannot {verb} resource '
                f'"leases" in API group "coordination.k8s.io" in the namespace "{namespace}"',
            )
        with self.lock:
            if verb == "get" and name:
                found = self.leases.get((namespace, name))
                return (200, found) if found else _status(404, "NotFound", _missing(name))
            if verb == "create" and not name and body is not None:
                return self._create(namespace, body)
            if verb == "update" and name and body is not None:
                return self._update(namespace, name, body)
        return _status(405, "MethodNotAllowed", f"{method} {path} is not served here")

    def _create(self, namespace: str, body: Obj) -> tuple[int, Obj]:
        name = body.get("metadata", {}).get("name", "")
        if (namespace, name) in self.leases:
            return _status(409, "AlreadyExists", f'{GROUP} "{name}" already exists')
        if body["metadata"].get("resourceVersion"):
            return _status(400, "BadRequest", "resourceVersion should not be set on create")
        return 201, self._store(namespace, name, body)

    def _update(self, namespace: str, name: str, body: Obj) -> tuple[int, Obj]:
        stored = self.leases.get((namespace, name))
        if stored is None:
            return _status(404, "NotFound", _missing(name))
        if body.get("metadata", {}).get("name") != name:
            return _status(400, "BadRequest", "the name of the object does not match the URL")
        given = body["metadata"].get("resourceVersion")
        if given and given != stored["metadata"]["resourceVersion"]:
            self.conflicts += 1
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {GROUP} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        return 200, self._store(namespace, name, body)

    def _store(self, namespace: str, name: str, body: Obj) -> Obj:
        obj = json.loads(json.dumps(body))
        obj["metadata"].update(namespace=namespace, resourceVersion=str(len(self.writes) + 100))
        self.leases[(namespace, name)] = obj
        self.writes.append(obj)
        return obj


class _Handler(BaseHTTPRequestHandler):
    def _serve(self) -> None:
        api: LeaseApi = self.server.api  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        code, obj = api.handle(self.command, self.path, token, body)
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _missing(name: str) -> str:
    return f'{GROUP} "{name}" not found'


def _status(code: int, reason: str, message: str) -> tuple[int, Obj]:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
