"""The subscriber's dead-letter topic: records that cannot be applied, with why, kept for replay."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from propagator.errors import PropagatorError, map_kafka_errors


def dead_letter_topic(topic: str, subscriber: str) -> str:
    return f"{topic}.{subscriber}.dlq"


class DeadLetters:
    """Forwards a failed record, unchanged, with headers describing the failure.

    The headers follow Spring Kafka's and Kafka Connect's DLQ headers: where the record
    came from, who failed to apply it, and why.
    """

    def __init__(
        self,
        *,
        producer: AIOKafkaProducer,
        topic: str,
        group_id: str,
        subscriber: str,
        timeout_s: float = 10.0,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._group_id = group_id
        self._subscriber = subscriber
        self._timeout_s = timeout_s

    @property
    def topic(self) -> str:
        return self._topic

    async def forward(
        self, record: ConsumerRecord[bytes, bytes], error: PropagatorError, attempts: int
    ) -> None:
        """Return once the broker acknowledged the dead letter, else raise BrokerUnavailable."""
        failure = [
            ("propagator-original-topic", record.topic.encode()),
            ("propagator-original-partition", str(record.partition).encode()),
            ("propagator-original-offset", str(record.offset).encode()),
            ("propagator-original-timestamp", str(record.timestamp).encode()),
            ("propagator-group", self._group_id.encode()),
            ("propagator-subscriber", self._subscriber.encode()),
            ("propagator-exception-class", type(error).__name__.encode()),
            ("propagator-exception-code", error.code.encode()),
            ("propagator-exception-message", error.message.encode()[:4096]),
            ("propagator-attempts", str(attempts).encode()),
            ("propagator-dead-lettered-at", datetime.now(UTC).isoformat().encode()),
        ]
        original = [(k, v) for k, v in (record.headers or ()) if not k.startswith("propagator-")]
        with map_kafka_errors():
            async with asyncio.timeout(self._timeout_s):
                await self._producer.send_and_wait(
                    self._topic,
                    value=record.value,
                    key=record.key,
                    headers=[*original, *failure],
                )
