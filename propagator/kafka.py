"""Kafka clients, built once at the edge from settings and handed to the parts that use them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from propagator.errors import PublishFailed, map_kafka_errors
from propagator.settings import KafkaSettings, WorkerSettings

_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict)


def make_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    # Idempotence forces acks=all and keeps per-partition order across retries.
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.linger_ms,
        request_timeout_ms=settings.request_timeout_ms,
    )


def make_consumer(
    kafka: KafkaSettings, worker: WorkerSettings, group_id: str, *topics: str
) -> AIOKafkaConsumer:
    # Offsets are committed by hand, only after the sink applied the records.
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}.{group_id}",
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=worker.fetch_max_wait_ms,
        max_poll_records=worker.max_batch,
        request_timeout_ms=kafka.request_timeout_ms + 30_000,
    )


async def ensure_topics(bootstrap_servers: str, topics: Iterable[TopicSpec]) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    with map_kafka_errors():
        await admin.start()
        try:
            response = await admin.create_topics(
                [
                    NewTopic(
                        t.name, t.partitions, t.replication_factor, topic_configs=dict(t.configs)
                    )
                    for t in topics
                ]
            )
        finally:
            await admin.close()
    for topic, code, *rest in response.topic_errors:
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            raise PublishFailed(f"cannot create topic {topic}: error {code} {rest}")


async def topic_partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic`` (none when it does not exist), asked of the controller."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found = [t for t in described if t.get("topic") == topic and not t.get("error_code")]
    return [TopicPartition(topic, p["partition"]) for t in found for p in t.get("partitions", ())]


async def start_reader(consumer: AIOKafkaConsumer) -> None:
    """Start a group-less consumer that will read assigned partitions."""
    await consumer.start()
    # Let the consumer's background task begin: aiokafka cannot stop a consumer whose
    # task was cancelled before it ever ran.
    await asyncio.sleep(0)
