"""The Redis denylist sink against a real Redis: the public key contract."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from consumers.sinks import RedisDenylistSink
from schemas import RevocationEvent, RevocationScope

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def event(
    n: int, *, scope: RevocationScope = RevocationScope.SESSION, at: datetime = T0
) -> RevocationEvent:
    return RevocationEvent(
        event_id=f"event_{n}",
        source="workos",
        source_kind="workos",
        type="session.revoked",
        scope=scope,
        session_id=f"session_{n}" if scope is RevocationScope.SESSION else None,
        user_id="user_1",
        organization_id="org_1",
        occurred_at=at,
        received_at=at,
        payload_sha256="0" * 64,
    )


@pytest.fixture
def sink(redis: Redis, unique: str) -> RedisDenylistSink:
    return RedisDenylistSink(redis=redis, key_prefix=f"test:{unique}:revoked:", ttl_s=600)


class TestSessionKeys:
    async def test_batch_writes_every_key_with_ttl(
        self, sink: RedisDenylistSink, redis: Redis
    ) -> None:
        """One pipelined batch writes each session key with the configured TTL."""
        await sink.apply([event(n) for n in range(50)])
        for n in range(50):
            key = sink.session_key(f"session_{n}")
            assert f"event_{n}" == json.loads(await redis.get(key))["event_id"]
            assert 0 < await redis.ttl(key) <= 600

    async def test_reapplying_is_idempotent_and_keeps_the_first_record(
        self, sink: RedisDenylistSink, redis: Redis
    ) -> None:
        """A duplicate or a second announcement does not rewrite the original record."""
        first = event(1)
        await sink.apply([first])
        again = first.model_copy(
            update={"event_id": "event_other", "occurred_at": T0 + timedelta(hours=1)}
        )
        await sink.apply([first, again])
        record = json.loads(await redis.get(sink.session_key("session_1")))
        assert "event_1" == record["event_id"]
        assert T0.isoformat() == record["revoked_at"]


class TestWatermarks:
    @pytest.mark.parametrize("scope", [RevocationScope.USER, RevocationScope.ORGANIZATION])
    async def test_watermark_only_moves_forward(
        self, sink: RedisDenylistSink, redis: Redis, scope: RevocationScope
    ) -> None:
        """Out-of-order events leave the watermark at the latest revocation time, in epoch ms."""
        late, early = T0 + timedelta(minutes=5), T0
        await sink.apply([event(1, scope=scope, at=late)])
        await sink.apply([event(2, scope=scope, at=early)])
        subject = "user_1" if scope is RevocationScope.USER else "org_1"
        key = sink.watermark_key(scope, subject)
        assert int(late.timestamp() * 1000) == int(await redis.get(key))
        assert 0 < await redis.ttl(key) <= 600
        assert key.endswith(f"{scope.value}:{subject}")
