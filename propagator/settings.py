"""The one settings object, read once at start-up and passed down.

Sources, highest precedence first: environment variables (prefix ``PROPAGATOR_``,
nested with ``__``, e.g. ``PROPAGATOR_KAFKA__BOOTSTRAP_SERVERS``), then the YAML file
named by ``--config`` or ``PROPAGATOR_CONFIG``, then the defaults below.
Nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from consumers.config import SubscriberConfig
from consumers.sinks.redis_denylist import RedisDenylistConfig
from propagator.sources import SourceConfig, WorkOSConfig
from propagator.sources._secrets import SecretList, read_secrets

CONFIG_ENV_VAR = "PROPAGATOR_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "identity.revocations"
    topic_partitions: int = Field(default=6, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)
    client_id: str = "propagator"
    # WorkOS expects an answer within 5 s; leave it time to read ours.
    publish_timeout_s: float = Field(default=4.0, gt=0)
    linger_ms: int = Field(default=1, ge=0)
    request_timeout_ms: int = Field(default=10_000, ge=1000)


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    socket_timeout_s: float = Field(default=2.0, gt=0)
    # Connections per client; a command that finds none free waits for one (at most
    # socket_timeout_s) instead of failing.
    max_connections: int = Field(default=64, ge=1)


class RateLimitSettings(_Section):
    """Token buckets per source and per client address; 0 disables a limit."""

    per_source_rps: float = Field(default=5000.0, ge=0)
    per_source_burst: int = Field(default=10000, ge=1)
    per_client_rps: float = Field(default=1000.0, ge=0)
    per_client_burst: int = Field(default=2000, ge=1)
    # Behind a trusted proxy, take the client address from X-Forwarded-For.
    trust_forwarded_for: bool = False


class IngestSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    # SO_REUSEPORT: several ingest processes bind the same host and port, and the kernel
    # spreads connections over them (one process per core).
    reuse_port: bool = False
    # Sent with 503 answers so that the identity provider retries.
    retry_after_s: int = Field(default=5, ge=1)
    # The same event id (per source) is published once within this window; the state lives in
    # Redis (redis.url). When Redis is down, events are published anyway and counted.
    dedupe: bool = True
    dedupe_ttl_s: int = Field(default=24 * 3600, ge=60)
    dedupe_key_prefix: str = "propagator:dedupe:"
    rate_limit: RateLimitSettings = RateLimitSettings()


class WorkOSSettings(_Section):
    """The WorkOS webhook source. Several secrets may be active at once, for rotation."""

    name: str = "workos"
    # Comma-separated in the environment: PROPAGATOR_WORKOS__SECRETS=whsec_a,whsec_b
    secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # A file with one secret per line (e.g. a mounted Kubernetes or Docker secret).
    secret_file: Path | None = None
    tolerance_s: float = Field(default=180.0, gt=0)

    @field_validator("secrets", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def active_secrets(self) -> list[bytes]:
        """Every accepted secret, as the HMAC key bytes WorkOS uses (UTF-8, as is)."""
        return [s.encode() for s in read_secrets(self.secrets, self.secret_file)]

    def as_source(self) -> WorkOSConfig:
        return WorkOSConfig(
            name=self.name,
            kind="workos",
            secrets=list(self.secrets),
            secret_file=self.secret_file,
            tolerance_s=self.tolerance_s,
        )


class DenylistSettings(_Section):
    """The Redis denylist contract that downstream guards read."""

    key_prefix: str = "propagator:revoked:"
    # A revoked session cannot outlive this, so neither does its denylist entry.
    max_session_lifetime_s: int = Field(default=30 * 24 * 3600, ge=60)


class InventorySettings(_Section):
    """The session inventory (see propagator/inventory.py); entries live as long as sessions."""

    enabled: bool = True
    key_prefix: str = "propagator:sessions:"


class WorkerSettings(_Section):
    subscriber: str = Field(default="redis-denylist", pattern=r"^[A-Za-z0-9._-]+$")
    group_prefix: str = "propagator."
    max_batch: int = Field(default=500, ge=1)
    # The broker holds an empty fetch at most this long; it bounds idle latency.
    fetch_max_wait_ms: int = Field(default=50, ge=0)
    # A fetch returns as soon as this much is there (or after fetch_max_wait_ms): 1 answers
    # each new record at once; more trades latency for fewer, fuller fetches.
    fetch_min_bytes: int = Field(default=1, ge=1)
    max_backoff_s: float = Field(default=5.0, gt=0)
    # Prometheus metrics of the worker process (GET /metrics); 0 turns the endpoint off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9108, ge=0, le=65535)

    @property
    def group_id(self) -> str:
        return f"{self.group_prefix}{self.subscriber}"


class ReceiptSettings(_Section):
    """Receipts: per subscriber, what became of each revocation; the durable audit log."""

    enabled: bool = True
    # Topic name; default: "{kafka.topic}.receipts".
    topic: str | None = None
    retention_ms: int = Field(default=400 * 24 * 3600 * 1000, ge=3_600_000)
    # The look-up projection of the latest state per event, in Redis.
    projection_prefix: str = "propagator:receipts:"
    projection_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)
    # The projection also indexes this many latest events (by received-at) for the dashboard.
    projection_recent: int = Field(default=200, ge=0)
    # How long the projection may trail the receipts topic: its consumer waits this long for
    # a fuller fetch, so that under load one write and one commit carry many receipts. A
    # receipt carries its own applied-at time, so the delay changes no figure it shows.
    projection_max_delay_ms: int = Field(default=200, ge=0, le=5000)


class AdminSettings(_Section):
    """Bearer tokens for the admin API; with none, the admin API is not served."""

    tokens: SecretList = Field(default_factory=list)
    token_file: Path | None = None

    def active_tokens(self) -> list[str]:
        return read_secrets(self.tokens, self.token_file)


class DashboardSettings(_Section):
    """The live dashboard (GET /dashboard, served with the admin API) and the worker stats it
    reads: each worker process writes its subscribers' counters to one Redis hash."""

    stats_key: str = "propagator:dashboard:subscribers"
    stats_interval_s: float = Field(default=2.0, gt=0)
    # A worker process not heard from for this long is left out (it stopped or hangs).
    stats_max_age_s: float = Field(default=60.0, gt=0)
    # How long the login cookie lasts; the browser polls every poll_interval_s.
    session_ttl_s: int = Field(default=8 * 3600, ge=60)
    poll_interval_s: float = Field(default=2.0, gt=0)
    latest: int = Field(default=25, ge=1, le=200)


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PROPAGATOR_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    ingest: IngestSettings = IngestSettings()
    # With no `subscribers`, one redis-denylist subscriber (worker.subscriber) is run.
    subscribers: list[SubscriberConfig] = Field(default_factory=list)
    # With no `sources`, the single WorkOS source of the `workos` section is served.
    sources: list[SourceConfig] = Field(default_factory=list)
    workos: WorkOSSettings = WorkOSSettings()
    denylist: DenylistSettings = DenylistSettings()
    inventory: InventorySettings = InventorySettings()
    worker: WorkerSettings = WorkerSettings()
    receipts: ReceiptSettings = ReceiptSettings()
    admin: AdminSettings = AdminSettings()
    dashboard: DashboardSettings = DashboardSettings()
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _unique_source_names(self) -> Self:
        for what, names in (
            ("source", [s.name for s in self.sources]),
            ("subscriber", [s.name for s in self.subscribers]),
        ):
            duplicates = {n for n in names if names.count(n) > 1}
            if duplicates:
                raise ValueError(f"{what} names must be unique: {sorted(duplicates)}")
        return self

    @property
    def receipts_topic(self) -> str:
        return self.receipts.topic or f"{self.kafka.topic}.receipts"

    def effective_subscribers(self) -> list[SubscriberConfig]:
        if self.subscribers:
            return list(self.subscribers)
        sink = RedisDenylistConfig(
            kind="redis-denylist",
            key_prefix=self.denylist.key_prefix,
            max_session_lifetime_s=self.denylist.max_session_lifetime_s,
            inventory_prefix=self.inventory.key_prefix if self.inventory.enabled else None,
        )
        return [SubscriberConfig(name=self.worker.subscriber, sink=sink)]

    def effective_sources(self) -> list[SourceConfig]:
        return list(self.sources) if self.sources else [self.workos.as_source()]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls),
            file_secret_settings,
        )


class ConfigFileError(ValueError):
    """The configuration file named on the command line or in PROPAGATOR_CONFIG is unusable."""


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once: environment, then the YAML file, then defaults."""
    path = config if config is not None else _config_from_env()
    if path is None:
        return Settings(**overrides)
    if not path.is_file():
        raise ConfigFileError(f"configuration file not found: {path}")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(yaml_file=path)

    return _FromFile(**overrides)


def _config_from_env() -> Path | None:
    value = os.environ.get(CONFIG_ENV_VAR)
    return Path(value) if value else None
