"""The dedupe claims and ingest's publish note, batched, against the real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from redis.asyncio import Redis

from consumers.receipts import EVENT_FIELD, ReceiptProjection
from propagator.dedupe import PublishOnce, RedisClaims
from propagator.publisher import Published
from propagator.redisclient import make_redis
from propagator.settings import RedisSettings
from schemas import RevocationEvent, RevocationScope
from tests.integration.conftest import REDIS_URL


def _event(event_id: str) -> RevocationEvent:
    now = datetime.now(UTC)
    return RevocationEvent(
        event_id=event_id,
        source="workos",
        source_kind="workos",
        type="session.revoked",
        scope=RevocationScope.SESSION,
        session_id=f"session_{event_id}",
        user_id="user_1",
        occurred_at=now,
        received_at=now,
        payload_sha256="0" * 64,
    )


class CountingPublisher:
    def __init__(self) -> None:
        self.published: list[str] = []

    async def publish(self, event: RevocationEvent) -> Published:
        await asyncio.sleep(0)
        self.published.append(event.event_id)
        return Published("t", 0, len(self.published))


async def test_claims_are_taken_once_and_marked_done(redis: Redis, unique: str) -> None:
    claims = RedisClaims(redis)
    keys = [f"test:{unique}:c:{i}" for i in range(3)]
    assert [True, True, True] == await claims.claim(keys, 30)
    assert [False, False, False] == await claims.claim(keys, 30)
    await claims.mark_done(keys[:2], 60)
    assert [b"done", b"done", b"pending"] == [await claims.state(k) for k in keys]
    assert 0 < await redis.ttl(keys[0]) <= 60
    await claims.release(keys[2])
    assert [True] == await claims.claim(keys[2:], 30)


async def test_concurrent_deliveries_publish_each_event_once(redis: Redis, unique: str) -> None:
    """300 requests (100 events, 3 copies each, across 3 PublishOnce as 3 processes would):
    100 records, 200 duplicates, and every event noted in the receipts projection."""
    projection = ReceiptProjection(
        redis=redis, prefix=f"test:{unique}:receipts:", ttl_s=600, recent=500
    )
    publisher = CountingPublisher()
    # Each "process" its own client, as the service builds it: a busy pool waits, never fails.
    clients = [make_redis(RedisSettings(url=REDIS_URL, max_connections=8)) for _ in range(3)]

    def process(client: Redis) -> PublishOnce:
        return PublishOnce(
            publisher=publisher,
            claims=RedisClaims(client),
            key_prefix=f"test:{unique}:dedupe:",
            also_on_publish=projection.note_published,
        )

    processes = [process(c) for c in clients]
    events = [_event(f"evt_{unique}_{i}") for i in range(100)]
    try:
        results = await asyncio.gather(*(p.publish(e) for e in events for p in processes))
        for p in processes:
            await p.settle()  # the "done" marks and notes follow the answers
    finally:
        for client in clients:
            await client.aclose()
    assert 100 == results.count("published")
    assert 200 == results.count("duplicate")
    assert sorted(e.event_id for e in events) == sorted(publisher.published)
    noted = await asyncio.gather(
        *(redis.hexists(projection.key(e.event_id), EVENT_FIELD) for e in events)
    )
    assert all(noted)
    recent: Sequence[bytes] = await redis.zrange(f"test:{unique}:receipts.recent", 0, -1)
    assert {e.event_id.encode() for e in events} == set(recent)
