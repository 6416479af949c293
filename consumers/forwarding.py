"""Forwards records the sink could not apply: to the next delayed retry topic, or to the
dead-letter topic, with headers describing the failure.

The headers follow Spring Kafka's and Kafka Connect's DLQ headers: where the record first
came from (kept across levels), who failed to apply it, why, how often, and when.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka.structs import ConsumerRecord

from propagator.errors import PropagatorError, SinkRejected, SinkUnavailable, map_kafka_errors
from propagator.kafka import Sender

H_PREFIX = "propagator-"
H_LEVEL = "propagator-retry-level"
H_DUE = "propagator-due-at-ms"
H_ATTEMPTS = "propagator-attempts"
H_FIRST_ATTEMPT = "propagator-first-attempt-ms"
H_REPLAYS = "propagator-replay-count"
_ORIGIN = ("topic", "partition", "offset", "timestamp")


def headers_of(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in (record.headers or ())}


@dataclass(frozen=True, slots=True)
class Route:
    retry_topics: Sequence[str]
    delays_s: Sequence[float]
    dead_letter_topic: str


class Forwarder:
    """Writes a failed record onward and returns once the broker acknowledged it."""

    def __init__(
        self,
        *,
        producer: Sender,
        route: Route,
        group_id: str,
        subscriber: str,
        timeout_s: float = 10.0,
    ) -> None:
        self._producer = producer
        self._route = route
        self._group_id = group_id
        self._subscriber = subscriber
        self._timeout_s = timeout_s

    @property
    def dead_letter_topic(self) -> str:
        return self._route.dead_letter_topic

    async def forward(
        self, record: ConsumerRecord[bytes, bytes], error: PropagatorError, attempts: int
    ) -> str:
        """Send to the next retry level, or dead-letter; return the topic written to."""
        previous = headers_of(record)
        level = int(previous[H_LEVEL]) + 1 if H_LEVEL in previous else 0
        total_attempts = int(previous.get(H_ATTEMPTS, "0")) + attempts
        now_ms = int(time.time() * 1000)
        retriable = error.retriable and not isinstance(error, SinkRejected)
        if retriable and level < len(self._route.retry_topics):
            delay_s = self._route.delays_s[level]
            if isinstance(error, SinkUnavailable) and error.retry_after_s:
                delay_s = max(delay_s, error.retry_after_s)
            topic = self._route.retry_topics[level]
            routing = {H_LEVEL: str(level), H_DUE: str(now_ms + int(delay_s * 1000))}
        else:
            topic = self._route.dead_letter_topic
            routing = {"propagator-dead-lettered-at-ms": str(now_ms)}
        failure = {
            H_ATTEMPTS: str(total_attempts),
            H_FIRST_ATTEMPT: previous.get(H_FIRST_ATTEMPT, str(now_ms)),
            "propagator-last-attempt-ms": str(now_ms),
            "propagator-group": self._group_id,
            "propagator-subscriber": self._subscriber,
            "propagator-exception-class": type(error).__name__,
            "propagator-exception-code": error.code,
            "propagator-exception-message": error.message[:2048],
            **routing,
        }
        status = getattr(error, "http_status", None)
        if status is not None:
            failure["propagator-http-status"] = str(status)
        for name, value in zip(
            _ORIGIN, (record.topic, record.partition, record.offset, record.timestamp), strict=True
        ):
            # Where the record first came from survives every hop.
            key = f"propagator-original-{name}"
            failure[key] = previous.get(key, str(value))
        kept = [(k, v) for k, v in (record.headers or ()) if not k.startswith(H_PREFIX)]
        if H_REPLAYS in previous:
            kept.append((H_REPLAYS, previous[H_REPLAYS].encode()))
        with map_kafka_errors():
            async with asyncio.timeout(self._timeout_s):
                await self._producer.send_and_wait(
                    topic,
                    value=record.value,
                    key=record.key,
                    headers=[*kept, *((k, v.encode()) for k, v in failure.items())],
                )
        return topic
