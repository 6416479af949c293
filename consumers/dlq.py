"""Operating a subscriber's dead letters: list, show, replay, purge.

Replay republishes a record to the subscriber's first retry topic, due at once, with its
original headers kept and ``propagator-replay-count`` incremented, so only that subscriber
sees it again. Purge deletes everything up to the current end of the dead-letter topic
(Kafka deletes by offset, not record by record): replay what you need first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from consumers.config import dead_letter_topic, retry_topic
from consumers.forwarding import H_DUE, H_LEVEL, H_REPLAYS
from propagator.errors import map_kafka_errors
from propagator.kafka import Sender, start_reader, topic_partitions


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def event_id(self) -> str | None:
        return self.headers.get("event-id")

    @property
    def error_class(self) -> str | None:
        return self.headers.get("propagator-exception-class")

    def summary(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "offset": self.offset,
            "dead_lettered_at": datetime.fromtimestamp(
                self.timestamp_ms / 1000, tz=UTC
            ).isoformat(),
            "event_id": self.event_id,
            "error_class": self.error_class,
            "error_code": self.headers.get("propagator-exception-code"),
            "error": self.headers.get("propagator-exception-message"),
            "attempts": int(self.headers.get("propagator-attempts", "0")),
            "http_status": self.headers.get("propagator-http-status"),
            "replays": int(self.headers.get(H_REPLAYS, "0")),
        }

    def detail(self) -> dict[str, Any]:
        value = self.value.decode("utf-8", "replace") if self.value is not None else None
        return {**self.summary(), "key": self.key, "headers": self.headers, "value": value}


@dataclass(frozen=True, slots=True)
class Selector:
    """Which dead letters an operation applies to; empty fields match everything."""

    since: datetime | None = None
    until: datetime | None = None
    event_id: str | None = None
    error_class: str | None = None

    def matches(self, letter: DeadLetter) -> bool:
        at = datetime.fromtimestamp(letter.timestamp_ms / 1000, tz=UTC)
        return (
            (self.since is None or at >= self.since)
            and (self.until is None or at < self.until)
            and (self.event_id is None or letter.event_id == self.event_id)
            and (self.error_class is None or letter.error_class == self.error_class)
        )


class DeadLetterQueue:
    """One subscriber's dead-letter topic, read from the start without a consumer group."""

    def __init__(self, *, bootstrap_servers: str, topic: str, subscriber: str) -> None:
        self._bootstrap = bootstrap_servers
        self.topic = dead_letter_topic(topic, subscriber)
        self._replay_topic = retry_topic(topic, subscriber, 0)

    async def read(self, selector: Selector = Selector()) -> list[DeadLetter]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
        with map_kafka_errors():
            partitions = await topic_partitions(self._bootstrap, self.topic)
            if not partitions:
                return []
            await start_reader(consumer)
            try:
                consumer.assign(partitions)
                await consumer.seek_to_beginning(*partitions)
                end = await consumer.end_offsets(partitions)
                letters: list[DeadLetter] = []
                remaining = {tp for tp in partitions if await consumer.position(tp) < end[tp]}
                while remaining:
                    batch = await consumer.getmany(*remaining, timeout_ms=1000)
                    for tp, records in batch.items():
                        for r in records:
                            if r.offset < end[tp]:
                                letters.append(_letter(r))
                        if await consumer.position(tp) >= end[tp]:
                            remaining.discard(tp)
            finally:
                await consumer.stop()
        return [letter for letter in letters if selector.matches(letter)]

    async def show(self, partition: int, offset: int) -> DeadLetter | None:
        return next(
            (x for x in await self.read() if (x.partition, x.offset) == (partition, offset)), None
        )

    async def replay(
        self,
        producer: Sender,
        letters: Sequence[DeadLetter],
        *,
        progress: Callable[[int, int], None] = lambda done, total: None,
    ) -> int:
        """Republish to the subscriber's path; return how many were replayed."""
        now_ms = int(time.time() * 1000)
        for done, letter in enumerate(letters, start=1):
            replays = int(letter.headers.get(H_REPLAYS, "0")) + 1
            # Original headers are kept; the routing ones are reset so it is due now, at level 0.
            headers = [
                (k, v.encode())
                for k, v in letter.headers.items()
                if k not in (H_LEVEL, H_DUE, H_REPLAYS) and not k.startswith("propagator-dead-")
            ]
            headers += [
                (H_REPLAYS, str(replays).encode()),
                (H_LEVEL, b"-1"),  # the next failure goes to level 0 again
                (H_DUE, str(now_ms).encode()),
            ]
            with map_kafka_errors():
                await producer.send_and_wait(
                    self._replay_topic,
                    value=letter.value,
                    key=letter.key.encode() if letter.key is not None else None,
                    headers=headers,
                )
            progress(done, len(letters))
        return len(letters)

    async def depth(self) -> int:
        """How many dead letters the topic holds now."""
        with map_kafka_errors():
            partitions = await topic_partitions(self._bootstrap, self.topic)
            if not partitions:
                return 0
            consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
            await start_reader(consumer)
            try:
                consumer.assign(partitions)
                end = await consumer.end_offsets(partitions)
                begin = await consumer.beginning_offsets(partitions)
            finally:
                await consumer.stop()
        return sum(end[tp] - begin[tp] for tp in partitions)

    async def purge(self) -> int:
        """Delete every dead letter up to the current end; return how many were deleted."""
        with map_kafka_errors():
            partitions = await topic_partitions(self._bootstrap, self.topic)
            if not partitions:
                return 0
            consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
            admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
            await start_reader(consumer)
            await admin.start()
            try:
                consumer.assign(partitions)  # so that the consumer loads the topic's metadata
                end = await consumer.end_offsets(partitions)
                begin = await consumer.beginning_offsets(partitions)
                await admin.delete_records({tp: RecordsToDelete(end[tp]) for tp in partitions})
            finally:
                await consumer.stop()
                await admin.close()
        return sum(end[tp] - begin[tp] for tp in partitions)


def _letter(record: Any) -> DeadLetter:
    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key.decode("utf-8", "replace") if record.key is not None else None,
        value=record.value,
        headers={k: v.decode("utf-8", "replace") for k, v in (record.headers or ())},
    )
