"""Publishes canonical revocation events to Kafka, answering only once the broker acknowledged."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from propagator import tracing
from propagator.errors import map_kafka_errors
from propagator.kafka import Sender
from schemas import SCHEMA_VERSION, RevocationEvent


@dataclass(frozen=True, slots=True)
class Published:
    topic: str
    partition: int
    offset: int


class Publisher(Protocol):
    """What the ingest handlers need: publish one event, return once it is durable."""

    async def publish(self, event: RevocationEvent) -> Published: ...


class KafkaPublisher:
    """Writes one event per record, keyed so that one user's events share a partition."""

    def __init__(self, *, producer: Sender, topic: str, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._producer = producer
        self._topic = topic
        self._timeout_s = timeout_s

    @property
    def topic(self) -> str:
        return self._topic

    async def publish(self, event: RevocationEvent) -> Published:
        """Send and wait for the broker's acknowledgement (acks=all), within the timeout."""
        headers = [
            ("content-type", b"application/json"),
            ("schema-version", str(SCHEMA_VERSION).encode()),
            ("event-id", event.event_id.encode()),
        ]
        traceparent = tracing.current.get()
        if traceparent is not None:
            headers.append((tracing.HEADER, traceparent.encode()))
        with map_kafka_errors():
            async with asyncio.timeout(self._timeout_s):
                metadata = await self._producer.send_and_wait(
                    self._topic,
                    value=event.to_bytes(),
                    key=event.partition_key.encode(),
                    headers=headers,
                )
        return Published(topic=metadata.topic, partition=metadata.partition, offset=metadata.offset)
