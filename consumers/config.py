"""Subscribers as configured: a name, a sink, a filter, and retry and circuit policies."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from consumers.sinks.http import HttpSinkConfig
from consumers.sinks.redis_denylist import RedisDenylistConfig
from consumers.sinks.redis_session_store import RedisSessionStoreConfig
from schemas import RevocationEvent, RevocationScope

SinkConfig = Annotated[
    RedisDenylistConfig | RedisSessionStoreConfig | HttpSinkConfig,
    Field(discriminator="kind"),
]


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventFilter(_Policy):
    """Which events a subscriber wants; an empty filter takes everything."""

    scopes: list[RevocationScope] | None = None
    types: list[str] | None = None
    sources: list[str] | None = None

    def matches(self, event: RevocationEvent) -> bool:
        return (
            (self.scopes is None or event.scope in self.scopes)
            and (self.types is None or event.type in self.types)
            and (self.sources is None or event.source in self.sources)
        )


class RetryPolicy(_Policy):
    """Quick in-process attempts, then delayed retry topics, then the dead-letter topic."""

    attempts: int = Field(default=3, ge=1, le=10)
    max_backoff_s: float = Field(default=2.0, gt=0)
    delays_s: list[float] = Field(default_factory=lambda: [5.0, 60.0, 600.0])

    @model_validator(mode="after")
    def _positive(self) -> Self:
        if any(d <= 0 for d in self.delays_s):
            raise ValueError("retry delays must be positive")
        return self


class CircuitPolicy(_Policy):
    """When the downstream is down, stop and probe instead of burning through retries."""

    failure_threshold: int = Field(default=5, ge=1)
    probe_interval_s: float = Field(default=1.0, gt=0)
    max_probe_interval_s: float = Field(default=30.0, gt=0)


class SubscriberConfig(_Policy):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    sink: SinkConfig
    filter: EventFilter = EventFilter()
    retry: RetryPolicy = RetryPolicy()
    circuit: CircuitPolicy = CircuitPolicy()


def retry_topic(topic: str, subscriber: str, level: int) -> str:
    return f"{topic}.{subscriber}.retry.{level}"


def dead_letter_topic(topic: str, subscriber: str) -> str:
    return f"{topic}.{subscriber}.dlq"
