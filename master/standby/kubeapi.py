"""The Kubernetes API as seen from inside a pod, over HTTPS with the standard library: just the
coordination.k8s.io/v1 Lease calls an election needs. No client library: the in-cluster config
is three files and two environment variables, and the API server is the arbiter, never code of
ours."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from shardmill.errors import ConfigError, ElectionError

ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")  # where the kubelet mounts it
ROLE = "shardmill-master-lease"  # the Role (docker/kubernetes/lease.yaml) the calls need
Obj = dict[str, Any]


class LeaseConflict(ElectionError):
    """409: the Lease changed since it was read (another master wrote first), or it exists.
    The elector handles it (a lost race); it never reaches the user."""


class KubeApi:
    """The API server named by KUBERNETES_SERVICE_HOST/PORT, trusted through the service
    account's CA, spoken to with its token (read anew on each call: the kubelet rotates it)."""

    def __init__(self, account: Path = ACCOUNT, *, timeout: float = 2.0) -> None:
        host, port = (os.environ.get(f"KUBERNETES_SERVICE_{k}", "") for k in ("HOST", "PORT"))
        token, ca = account / "token", account / "ca.crt"
        missing = [str(p) for p in (token, ca, account / "namespace") if not p.is_file()]
        if not host or not port or missing:
            raise ConfigError(
                "--k8s-lease needs the pod's in-cluster config: "
                + (f"no {', '.join(missing)}" if missing else "no KUBERNETES_SERVICE_HOST/PORT")
                + "; run the master in a pod with a ServiceAccount and "
                "automountServiceAccountToken: true (docker/kubernetes/lease.yaml), or set "
                "SHARDMILL_MASTER_K8S_ACCOUNT to where its token, ca.crt and namespace are"
            )
        self.url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        self.namespace = (account / "namespace").read_text().strip()
        self.token_file, self.timeout = token, timeout
        self.tls = ssl.create_default_context(cafile=str(ca))

    def leases(self, name: str = "") -> str:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        return f"{path}/{name}" if name else path

    def get(self, name: str) -> Obj | None:
        """The Lease, or None when there is none of that name."""
        return self.call("GET", self.leases(name), verb="get", name=name)

    def create(self, lease: Obj) -> Obj:
        """POST a new Lease; LeaseConflict when one of its name exists already."""
        name = lease["metadata"]["name"]
        made = self.call("POST", self.leases(), lease, verb="create", name=name)
        assert made is not None, "a create answers with the object"
        return made

    def replace(self, lease: Obj) -> Obj:
        """PUT the Lease; LeaseConflict unless metadata.resourceVersion is still the stored one."""
        name = lease["metadata"]["name"]
        done = self.call("PUT", self.leases(name), lease, verb="update", name=name)
        if done is None:
            raise LeaseConflict(f"lease {name} was deleted")
        return done

    def call(self, method: str, path: str, body: Obj | None = None, **what: str) -> Obj | None:
        """One request; the object answered, None on 404, LeaseConflict on 409, else an
        ElectionError that names the call and the fix."""
        req = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self._token()}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.tls) as resp:
                found: Obj = json.loads(resp.read())
                return found
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise self._refused(e, **what) from e
        except (OSError, ValueError) as e:  # URLError, TLS, a timeout, a reply that is not JSON
            raise ElectionError(
                f"the Kubernetes API at {self.url} did not answer {method} {path} ({e})"
            ) from e

    def _refused(self, e: urllib.error.HTTPError, *, verb: str, name: str) -> ElectionError:
        """The error to raise for an HTTP error other than 404: it names the fix."""
        try:
            message = str(json.loads(e.read()).get("message", ""))
        except (OSError, ValueError, AttributeError):
            message = ""
        finally:
            e.close()
        said = f"{e.code} {e.reason}: {message}" if message else f"{e.code} {e.reason}"
        if e.code == 409:
            return LeaseConflict(said)
        lease = f"lease {name} in namespace {self.namespace}"
        if e.code == 403:
            return ElectionError(
                f"the Kubernetes API refused to {verb} {lease} ({said}): the master's "
                f"ServiceAccount needs the Role {ROLE} (get, update on that Lease, create on "
                "leases) and a RoleBinding to it: docker/kubernetes/lease.yaml"
            )
        if e.code == 401:
            return ElectionError(
                f"the Kubernetes API did not accept the token in {self.token_file} ({said}): "
                "is it this cluster's service-account token, still valid?"
            )
        return ElectionError(f"the Kubernetes API could not {verb} {lease} ({said})")

    def _token(self) -> str:
        try:
            return self.token_file.read_text().strip()
        except OSError as e:
            raise ElectionError(f"the service-account token went away: {e}") from e
