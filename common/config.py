"""Settings for each role: defaults, descriptions, env vars, plain-English cross-field errors."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class MasterSettings(BaseSettings):
    """`shardmill master`; every field also reads SHARDMILL_MASTER_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="SHARDMILL_MASTER_", extra="ignore")

    host: str = Field("127.0.0.1", description="interface to bind; 0.0.0.0 for every interface")
    port: int = Field(5555, ge=0, le=65535, description="worker port (0 picks a free one)")
    client_port: int = Field(5556, ge=0, le=65535, description="client port (0 picks a free one)")
    heartbeat_interval: float = Field(1.0, gt=0, description="seconds between heartbeats")
    heartbeat_liveness: int = Field(3, ge=1, description="missed heartbeats before expiry")
    retry_backoff: float = Field(0.05, ge=0, description="first retry delay in seconds")
    retry_backoff_max: float = Field(5.0, ge=0, description="longest retry delay in seconds")
    state_dir: Path | None = Field(
        None, description="checkpoint directory; a restarted master resumes from it"
    )
    job_retention: float | None = Field(
        7 * 24 * 3600.0, ge=0, description="seconds finished jobs are kept (None: forever)"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @model_validator(mode="after")
    def _check(self) -> MasterSettings:
        if self.port and self.port == self.client_port:
            raise ValueError(
                f"port and client_port are both {self.port}; give the client API its own port"
            )
        if self.retry_backoff_max < self.retry_backoff:
            raise ValueError("retry_backoff_max must be at least retry_backoff")
        return self


class WorkerSettings(BaseSettings):
    """`shardmill worker`; every field also reads SHARDMILL_WORKER_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="SHARDMILL_WORKER_", extra="ignore")

    master: str = Field("tcp://127.0.0.1:5555", description="the master's worker address")
    slots: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=4096,
        description="shards run at once (one child process each)",
    )
    imports: list[str] = Field(default_factory=list, description="modules tasks may come from")
    heartbeat_interval: float = Field(1.0, gt=0, description="until the master says otherwise")
    heartbeat_liveness: int = Field(3, ge=1, description="missed master beats before reconnect")
    reconnect_max: float = Field(5.0, gt=0, description="longest wait between reconnects")
    drain_grace: float = Field(30.0, ge=0, description="seconds to finish shards on SIGTERM")
    health_file: Path | None = Field(None, description="touched whenever the master is heard")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        if not self.master.startswith(("tcp://", "ipc://")):
            raise ValueError(f"master {self.master!r} is not a ZeroMQ address; use tcp://HOST:5555")
        return self


class ClientSettings(BaseSettings):
    """Clients and the CLI: SHARDMILL_MASTER and SHARDMILL_CONNECT_TIMEOUT."""

    model_config = SettingsConfigDict(env_prefix="SHARDMILL_", extra="ignore")

    master: str = Field("tcp://127.0.0.1:5556", description="the master's client address")
    connect_timeout: float = Field(5.0, gt=0, description="seconds before 'master unreachable'")
    reconnect_timeout: float = Field(
        60.0, gt=0, description="seconds a waiting client keeps retrying a vanished master"
    )
