"""Kafka helpers for the bench: topics, a pre-filled topic, and a consumer group's progress."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from aiokafka.protocol.admin import DeleteGroupsRequest

from propagator.kafka import TopicSpec, ensure_topics
from schemas import SCHEMA_VERSION, RevocationEvent, RevocationScope

PARTITIONS = 6


async def create_topics(bootstrap: str, *names: str, partitions: int = PARTITIONS) -> None:
    await ensure_topics(bootstrap, [TopicSpec(name, partitions, 1) for name in names])


def canonical_event(serial: str) -> RevocationEvent:
    """A canonical event like the ones ingest publishes for a WorkOS ``session.revoked``."""
    now = datetime.now(UTC)
    return RevocationEvent(
        event_id=f"event_{serial}",
        source="workos",
        source_kind="workos",
        type="session.revoked",
        scope=RevocationScope.SESSION,
        session_id=f"session_{serial}",
        user_id=f"user_{serial}",
        organization_id="org_01H945H0YD4F97JN9MATX7BYAG",
        occurred_at=now,
        received_at=now,
        payload_sha256=hashlib.sha256(serial.encode()).hexdigest(),
    )


def record_headers(event: RevocationEvent) -> list[tuple[str, bytes]]:
    """The headers ingest's publisher puts on every record."""
    return [
        ("content-type", b"application/json"),
        ("schema-version", str(SCHEMA_VERSION).encode()),
        ("event-id", event.event_id.encode()),
    ]


async def prefill(bootstrap: str, topic: str, *, count: int, run_id: str) -> list[str]:
    """Write ``count`` canonical events (acks=all), one user each; returns their session ids.

    Records are appended to per-partition batches and sent batch by batch: the per-record
    path of aiokafka costs tens of microseconds, which would make the pre-fill, rather than
    what is measured, take most of the time.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        max_batch_size=512 * 1024,
    )
    marker = "SERIAL0000000000"
    template = canonical_event(marker)
    value, headers = template.to_bytes(), record_headers(template)
    await producer.start()
    session_ids: list[str] = []
    try:
        batches = {p: producer.create_batch() for p in range(PARTITIONS)}
        sent = []
        for i in range(count):
            serial = f"{run_id}p{i:08d}".encode()
            session_ids.append(f"session_{serial.decode()}")
            # Record i lands at offset i // PARTITIONS of partition i % PARTITIONS.
            partition = i % PARTITIONS
            record = {
                "key": b"user_" + serial,
                "value": value.replace(marker.encode(), serial),
                "timestamp": None,
                "headers": [(k, v.replace(marker.encode(), serial)) for k, v in headers],
            }
            if batches[partition].append(**record) is None:  # full: send it, start another
                sent.append(
                    await producer.send_batch(batches[partition], topic, partition=partition)
                )
                batches[partition] = producer.create_batch()
                batches[partition].append(**record)
        for partition, batch in batches.items():
            if batch.record_count():
                sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return session_ids


@dataclass(frozen=True, slots=True)
class GroupState:
    state: str
    members: int


class Cluster:
    """One admin connection for the bench's questions about topics and consumer groups."""

    def __init__(self, bootstrap: str) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        # No group: it only reads end offsets.
        self._offsets = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def __aenter__(self) -> Self:
        await self._admin.start()
        try:
            await self._offsets.start()
        except BaseException:
            await self._admin.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._offsets.stop()
        finally:
            await self._admin.close()

    async def records(self, topic: str, partitions: int = PARTITIONS) -> int:
        """How many records the topic holds (the sum of its partitions' end offsets)."""
        ends = await self._offsets.end_offsets(
            [TopicPartition(topic, p) for p in range(partitions)]
        )
        return sum(ends.values())

    async def committed(self, group_id: str, topic: str) -> dict[int, int]:
        """The group's committed offset on each partition of the topic that has one."""
        offsets: dict[TopicPartition, Any] = await self._admin.list_consumer_group_offsets(group_id)
        return {
            tp.partition: o.offset
            for tp, o in offsets.items()
            if tp.topic == topic and o.offset > 0
        }

    async def group(self, group_id: str) -> GroupState:
        responses = await self._admin.describe_consumer_groups([group_id])
        for response in responses:
            for group in response.groups:
                # (error_code, group_id, state, protocol_type, protocol, members)
                if group[1] == group_id:
                    return GroupState(state=group[2], members=len(group[5]))
        return GroupState(state="Unknown", members=0)

    async def wait_group(self, group_id: str, members: int, timeout_s: float) -> None:
        """Until the group is stable with ``members`` members (each then holds partitions)."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    state = await self.group(group_id)
                except GroupCoordinatorNotAvailableError:
                    # A new broker creates __consumer_offsets on the first group's look-up.
                    state = GroupState(state="Unknown", members=0)
                if state.state == "Stable" and state.members == members:
                    return
                await asyncio.sleep(0.05)

    async def delete_groups(self, prefix: str) -> list[str]:
        """Delete every (empty) consumer group whose id starts with ``prefix``."""
        names = [g for g, _ in await self._admin.list_consumer_groups() if g.startswith(prefix)]
        for name in names:
            # aiokafka's admin client has no delete_consumer_groups; the request it lacks is
            # one message to the group's coordinator.
            coordinator = await self._admin.find_coordinator(name)
            await self._admin._send_request(DeleteGroupsRequest([name]), coordinator)
        return names

    async def delete_topics(self, prefix: str) -> list[str]:
        """Delete every topic whose name starts with ``prefix`` (this run's, nobody else's)."""
        names = [t for t in await self._admin.list_topics() if t.startswith(prefix)]
        if names:
            await self._admin.delete_topics(names)
        return names
