"""Settings for each role: defaults, descriptions, env vars, plain-English cross-field errors."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_EDGE_BUDGET = 2 << 30  # bytes waiting between two pipeline stages (MasterSettings)

_ADDRESS = re.compile(r"^(tcp://([^\s:/\[\]]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}|ipc://\S+)$")


def address_problem(address: str, *, port: int) -> str | None:
    """Why `address` (one master, or several a standby may take over from, comma-separated)
    is not one a peer can connect to, with the fix; None when it is."""
    for one in address.split(","):
        if not _ADDRESS.match(one.strip()):
            return (
                f"master {one.strip()!r} is not a ZeroMQ address to connect to; use "
                f"tcp://HOST:PORT, for example tcp://127.0.0.1:{port}, or several separated "
                f"by commas (a primary and its standby): tcp://a:{port},tcp://b:{port}"
            )
    return None


def addresses(address: str) -> list[str]:
    """The masters in a (checked) --master value, in the order given."""
    return [one.strip() for one in address.split(",")]


def _keys_field(role: str) -> Path | None:
    return Field(
        None,
        validation_alias=AliasChoices(f"SHARDMILL_{role}_KEYS", "SHARDMILL_KEYS"),
        description="CURVE key directory made by `shardmill keygen`",
    )


def _health_field(role: str, when: str) -> Path | None:
    return Field(
        None,
        validation_alias=AliasChoices(f"SHARDMILL_{role}_HEALTH_FILE", "SHARDMILL_HEALTH_FILE"),
        description=f"file touched {when} (`shardmill health` reads its age)",
    )


def _insecure_field(role: str) -> bool:
    return Field(
        False,
        validation_alias=AliasChoices(f"SHARDMILL_{role}_INSECURE", "SHARDMILL_INSECURE"),
        description="plaintext, unauthenticated sockets (trusted networks only)",
    )


class MasterSettings(BaseSettings):
    """`shardmill master`; every field also reads SHARDMILL_MASTER_<FIELD>."""

    model_config = SettingsConfigDict(
        env_prefix="SHARDMILL_MASTER_", extra="ignore", populate_by_name=True
    )

    host: str = Field("127.0.0.1", description="interface to bind; 0.0.0.0 for every interface")
    port: int = Field(5555, ge=0, le=65535, description="worker port (0 picks a free one)")
    client_port: int = Field(5556, ge=0, le=65535, description="client port (0 picks a free one)")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve Prometheus metrics over HTTP here (on host)"
    )
    heartbeat_interval: float = Field(1.0, gt=0, description="seconds between heartbeats")
    heartbeat_liveness: int = Field(3, ge=1, description="missed heartbeats before expiry")
    retry_backoff: float = Field(0.05, ge=0, description="first retry delay in seconds")
    retry_backoff_max: float = Field(5.0, ge=0, description="longest retry delay in seconds")
    speculate_after: float = Field(
        2.0,
        ge=0,
        description="start a backup attempt of a shard running this many times its job's "
        "median shard time, on an idle worker (0: never; a job may override)",
    )
    speculate_min_age: float = Field(
        1.0,
        ge=0,
        description="seconds a shard runs before a backup may start (on a worker slower by "
        "this much per shard of the job: one median, if shorter)",
    )
    prefetch_below: float = Field(
        0.1,
        ge=0,
        description="queue shards on workers (their prefetch) for jobs whose shards take less "
        "than this many seconds on average; 0 never does",
    )
    state_dir: Path | None = Field(
        None, description="checkpoint directory; a restarted master resumes from it"
    )
    job_retention: float | None = Field(
        7 * 24 * 3600.0, ge=0, description="seconds finished jobs are kept (None: forever)"
    )
    replay_bundle_bytes: int = Field(
        64 << 20,
        ge=0,
        description="the most argument bytes a failed attempt's replay bundle keeps in the "
        "state dir (above it, the bundle says so and `shardmill replay` cannot run it; "
        "0: no bundles)",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["text", "json"] = Field("text", description="json: one object per line")
    health_file: Path | None = _health_field("MASTER", "on each heartbeat while serving")
    keys: Path | None = _keys_field("MASTER")
    insecure: bool = _insecure_field("MASTER")
    data_roots: list[Path] = Field(
        default_factory=lambda: [Path.cwd(), Path(tempfile.gettempdir())],
        description="datasets must resolve inside one of these directories",
    )
    max_message_bytes: int = Field(256 * 2**20, ge=1024, description="largest message accepted")
    edge_budget: int = Field(
        DEFAULT_EDGE_BUDGET,
        ge=0,
        description="bytes of a pipeline stage's output that may wait on the workers' disks "
        "for the next stage: beyond it the stage pauses while the next absorbs what waits "
        "(0: no bound; a pipeline may say its own)",
    )
    max_shards: int = Field(100_000, ge=1, description="most shards one job may have")
    max_queued_jobs: int = Field(1000, ge=1, description="unfinished jobs per client key")
    finished_jobs_kept: int = Field(
        10_000,
        ge=1,
        description="without a state dir: the most finished jobs kept whole in memory (the "
        "oldest past it are forgotten; with one, a finished job is a summary in memory)",
    )
    finished_bytes_kept: int = Field(
        256 << 20,
        ge=0,
        description="without a state dir: the most bytes of finished jobs' results kept",
    )
    max_result_bytes: int = Field(256 * 2**20, ge=1024, description="largest shard result")
    imports: list[str] = Field(default_factory=list, description="modules user ops come from")
    shm_pool_bytes: int = Field(
        2 << 30, ge=0, description="finished jobs' shared-memory segments kept for reuse"
    )
    shm_pool_idle: float = Field(
        60.0, ge=0, description="seconds an unclaimed pooled segment is kept"
    )
    peer: str | None = Field(
        None,
        description="the other master's replication address (tcp://HOST:5557), or both "
        "masters' (the one on this host is skipped): with it this master runs with a standby "
        "(docs/standby.md); commits are shipped there when primary",
    )
    replica_port: int = Field(5557, ge=1, le=65535, description="port a standby replicates on")
    etcd: str | None = Field(
        None, description="etcd's client URL (http://HOST:2379): elects the primary by a lease"
    )
    election_key: str = Field("shardmill", description="prefix of the election's etcd keys")
    k8s_lease: str | None = Field(
        None,
        description="a Kubernetes Lease's name (in the pod's namespace): elects the primary "
        "through the API server, in-cluster (docs/kubernetes.md)",
    )
    k8s_account: Path = Field(
        Path("/var/run/secrets/kubernetes.io/serviceaccount"),
        description="where the pod's service-account token, ca.crt and namespace are mounted",
    )
    lease_ttl: int = Field(2, ge=2, le=600, description="seconds the primary's lease lasts")
    standby: bool = Field(
        False,
        description="without an arbiter: start as the standby; `shardmill promote` takes over",
    )
    standby_timeout: float = Field(
        1.0, gt=0, description="seconds a commit waits for the standby before it is let go"
    )
    name: str = Field("", description="this master's name in the election (default host-pid)")
    alone: bool = Field(
        False,
        description="run a state dir that was one of a pair of masters without its pair: only "
        "once the other master is stopped for good (else two primaries could serve)",
    )

    @model_validator(mode="after")
    def _check(self) -> MasterSettings:
        if self.port and self.port == self.client_port:
            raise ValueError(
                f"port and client_port are both {self.port}; give the client API its own port"
            )
        if self.retry_backoff_max < self.retry_backoff:
            raise ValueError("retry_backoff_max must be at least retry_backoff")
        if self.etcd and self.k8s_lease:
            raise ValueError("give one arbiter: --etcd or --k8s-lease, not both")
        if self.peer is not None:
            _check_peer(self.peer, self.state_dir)
        elif self.etcd or self.k8s_lease or self.standby:
            raise ValueError(
                "--etcd, --k8s-lease and --standby need --peer tcp://OTHER-MASTER:5557, the "
                "address the two masters replicate on (docs/standby.md)"
            )
        return self


def _check_peer(peer: str, state_dir: Path | None) -> None:
    addresses = peer.split(",")
    if len(addresses) > 2 or not all(_ADDRESS.match(a) for a in addresses):
        raise ValueError(
            f"peer {peer!r} is not one ZeroMQ address (or two, the pair's); use the other "
            "master's replication address, for example tcp://master-b:5557"
        )
    if state_dir is None:
        raise ValueError(
            "a master with a --peer needs a --state-dir: the standby's copy lives there"
        )


class WorkerSettings(BaseSettings):
    """`shardmill worker`; every field also reads SHARDMILL_WORKER_<FIELD>."""

    model_config = SettingsConfigDict(
        env_prefix="SHARDMILL_WORKER_", extra="ignore", populate_by_name=True
    )

    master: str = Field("tcp://127.0.0.1:5555", description="the master's worker address")
    slots: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=4096,
        description="shards run at once (one child process each)",
    )
    imports: list[str] = Field(default_factory=list, description="modules tasks may come from")
    prefetch: int | None = Field(
        None,
        ge=0,
        le=4096,
        description="most short shards queued beyond the slots, to start the moment one "
        "ends; the master sizes the window to its round trip (default: 256 per slot; 0: none)",
    )
    heartbeat_interval: float = Field(1.0, gt=0, description="until the master says otherwise")
    heartbeat_liveness: int = Field(3, ge=1, description="missed master beats before reconnect")
    reconnect_max: float = Field(5.0, gt=0, description="longest wait between reconnects")
    drain_grace: float = Field(30.0, ge=0, description="seconds to finish shards on SIGTERM")
    health_file: Path | None = _health_field("WORKER", "whenever the master is heard")
    alive_file: Path | None = Field(
        None,
        description="file touched on every turn of the agent's loop, heard from the master or "
        "not: a liveness probe on it restarts a hung worker, never one waiting out a master "
        "outage (`shardmill health --file` reads its age)",
    )
    shuffle_dir: Path | None = Field(
        None, description="where pipelines' map outputs are kept (default: a temporary directory)"
    )
    shuffle_host: str = Field(
        "",
        description="the name or address peers fetch map outputs at (default: 127.0.0.1 when "
        "the master's address is loopback, else this host's address on the route to the master)",
    )
    shuffle_memory: int = Field(
        1 << 30,
        ge=1 << 16,
        description="bytes of pipeline shuffle buffers for the whole worker, shared by its slots: "
        "a stage shard buffers up to a quarter of its share, then spills a run to --shuffle-dir",
    )
    shuffle_ttl: float = Field(
        3600.0, gt=0, description="seconds unused after which a pipeline's map outputs are removed"
    )
    shuffle_port: int = Field(
        0, ge=0, le=65535, description="the port map outputs are served on (0: any free port)"
    )
    output_bytes: int = Field(
        1 << 20,
        ge=0,
        le=64 << 20,
        description="the last bytes of what each attempt prints (stdout and stderr) sent with "
        "its result or failure and kept in its story (0: none)",
    )
    keys: Path | None = _keys_field("WORKER")
    insecure: bool = _insecure_field("WORKER")
    allow_pickle: bool = Field(
        False,
        description="run pickled calls (cloudpickle) from clients the master allows: trusted "
        "clusters only, as unpickling runs whatever the bytes say",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["text", "json"] = Field("text", description="json: one object per line")

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        problem = address_problem(self.master, port=5555)
        if problem:
            raise ValueError(problem)
        return self


class ClientSettings(BaseSettings):
    """Clients and the CLI: SHARDMILL_MASTER and SHARDMILL_CONNECT_TIMEOUT."""

    model_config = SettingsConfigDict(
        env_prefix="SHARDMILL_", extra="ignore", populate_by_name=True
    )

    master: str = Field("tcp://127.0.0.1:5556", description="the master's client address")
    connect_timeout: float = Field(5.0, gt=0, description="seconds before 'master unreachable'")
    keys: Path | None = Field(None, description="CURVE key directory (SHARDMILL_KEYS)")
    insecure: bool = Field(False, description="plaintext sockets (SHARDMILL_INSECURE)")
    max_message_bytes: int = Field(256 * 2**20, ge=1024, description="largest request sent")
    reconnect_timeout: float = Field(
        60.0, gt=0, description="seconds a waiting client keeps retrying a vanished master"
    )
    shared_memory: bool = Field(
        True,
        description="pass large arrays through /dev/shm when the master shares this host's",
    )
    shm_min_bytes: int = Field(
        1 << 20, ge=0, description="arrays at least this big go through shared memory"
    )
