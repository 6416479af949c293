"""Fixtures for tests against the real local Kafka broker and Redis (``make test`` starts them).

TEST_KAFKA_BOOTSTRAP and TEST_REDIS_URL point elsewhere when needed. Every test gets a
fresh topic, consumer group and Redis key prefix, so tests never see each other's data.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis

from propagator.kafka import TopicSpec, ensure_topics
from propagator.settings import (
    DenylistSettings,
    IngestSettings,
    KafkaSettings,
    LogSettings,
    ReceiptSettings,
    RedisSettings,
    Settings,
    WorkerSettings,
    WorkOSSettings,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

KAFKA_BOOTSTRAP = os.environ.get("TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SECRET = "whsec_integration_secret"
REPO = Path(__file__).resolve().parents[2]


def _load_ping() -> Callable[[str, int], bool]:
    spec = importlib.util.spec_from_file_location("kafka_ping", REPO / "deploy/local/kafka_ping.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ping: Callable[[str, int], bool] = module.ping
    return ping


@pytest.fixture(scope="session", autouse=True)
def _real_services() -> None:
    """Fail (never skip) when the broker or Redis is missing: these tests are the proof."""
    host, port = KAFKA_BOOTSTRAP.rsplit(":", 1)
    if not _load_ping()(host, int(port)):
        pytest.fail(f"no Kafka broker answers on {KAFKA_BOOTSTRAP}: run `make test`")
    try:
        redis_port = int(REDIS_URL.split(":")[2].split("/")[0])
        socket.create_connection(("127.0.0.1", redis_port), timeout=2).close()
    except OSError:
        pytest.fail(f"no Redis answers at {REDIS_URL}: run `make test`")


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
async def topic(unique: str) -> str:
    name = f"test.revocations.{unique}"
    await ensure_topics(KAFKA_BOOTSTRAP, [TopicSpec(name, 3, 1)])
    return name


@pytest.fixture
async def redis(unique: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    keys = [k async for k in client.scan_iter(match=f"test:{unique}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def settings(topic: str, unique: str, redis: Redis) -> Settings:
    # Depends on `redis` so that the test's keys (denylist and dedupe) are removed afterwards.
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=KAFKA_BOOTSTRAP, topic=topic, topic_partitions=3),
        redis=RedisSettings(url=REDIS_URL),
        ingest=IngestSettings(dedupe_key_prefix=f"test:{unique}:dedupe:"),
        workos=WorkOSSettings(secrets=[SECRET]),  # type: ignore[list-item]
        denylist=DenylistSettings(
            key_prefix=f"test:{unique}:revoked:", max_session_lifetime_s=3600
        ),
        worker=WorkerSettings(subscriber=f"test-{unique}", fetch_max_wait_ms=20, metrics_port=0),
        receipts=ReceiptSettings(projection_prefix=f"test:{unique}:receipts:"),
        log=LogSettings(format="json"),
    )


async def record_count(topic: str) -> int:
    """How many records the topic holds, read from the broker's offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA_BOOTSTRAP, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            await consumer._client.force_metadata_update()  # newly created topic
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
            ]
        assert partitions, f"topic {topic} does not exist"
        end = await consumer.end_offsets(partitions)
        begin = await consumer.beginning_offsets(partitions)
        return sum(end[tp] - begin[tp] for tp in partitions)
    finally:
        await consumer.stop()


async def committed_offsets(group_id: str, topic: str, partitions: int) -> int:
    """The sum of the group's committed offsets on the topic (0 when nothing is committed)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=KAFKA_BOOTSTRAP, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        total = 0
        for p in range(partitions):
            offset = await consumer.committed(TopicPartition(topic, p))
            total += offset or 0
        return total
    finally:
        await consumer.stop()


async def read_events(topic: str, expected: int, *, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Read records from the start of the topic until ``expected`` arrived (or the deadline)."""
    import json

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=KAFKA_BOOTSTRAP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: list[dict[str, Any]] = []
    try:

        async def enough() -> bool:
            batch = await consumer.getmany(timeout_ms=200)
            seen.extend(json.loads(r.value) for rs in batch.values() for r in rs)
            return len(seen) >= expected

        await wait_for(enough, timeout=timeout)
    finally:
        await consumer.stop()
    return seen
