"""Publishing once per event id: in-process coalescing and the Redis claim, with fakes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from propagator.dedupe import PublishOnce
from propagator.errors import BrokerUnavailable
from propagator.publisher import Published
from schemas import RevocationEvent, RevocationScope


def event(event_id: str = "event_1") -> RevocationEvent:
    now = datetime.now(UTC)
    return RevocationEvent(
        event_id=event_id,
        source="workos",
        source_kind="workos",
        type="session.revoked",
        scope=RevocationScope.SESSION,
        session_id="session_1",
        user_id="user_1",
        occurred_at=now,
        received_at=now,
        payload_sha256="0" * 64,
    )


@dataclass
class GatedPublisher:
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    published: list[str] = field(default_factory=list)
    fail: Exception | None = None

    async def publish(self, ev: RevocationEvent) -> Published:
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.published.append(ev.event_id)
        return Published("t", 0, len(self.published))


@dataclass
class FakeRedis:
    data: dict[str, bytes] = field(default_factory=dict)
    down: bool = False

    def _check(self) -> None:
        if self.down:
            raise RedisConnectionError("down")

    async def set(self, key: str, value: bytes, nx: bool = False, ex: int | None = None) -> bool:
        self._check()
        if nx and key in self.data:
            return False
        self.data[key] = value
        return True

    async def get(self, key: str) -> bytes | None:
        self._check()
        return self.data.get(key)

    async def delete(self, key: str) -> int:
        self._check()
        return 1 if self.data.pop(key, None) is not None else 0

    def pipeline(self, transaction: bool = False) -> FakePipeline:
        return FakePipeline(self)


@dataclass
class FakePipeline:
    redis: FakeRedis
    queued: list[tuple[str, bytes]] = field(default_factory=list)
    executions: int = 0

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def set(self, key: str, value: bytes, ex: int | None = None) -> None:
        self.queued.append((key, value))

    async def execute(self) -> None:
        self.redis._check()
        self.redis.data.update(self.queued)
        self.executions += 1


async def all_started(tasks: list[asyncio.Task[object]]) -> None:
    # One turn of the loop runs every task up to its first real wait.
    await asyncio.sleep(0)


class TestInProcess:
    async def test_concurrent_copies_share_one_publish(self) -> None:
        """50 concurrent copies of one event: 1 published, 49 duplicates."""
        publisher = GatedPublisher()
        once = PublishOnce(publisher=publisher, redis=None)
        tasks = [asyncio.create_task(once.publish(event())) for _ in range(50)]
        await all_started(tasks)  # type: ignore[arg-type]
        publisher.gate.set()
        results = await asyncio.gather(*tasks)
        assert 1 == results.count("published")
        assert 49 == results.count("duplicate")
        assert ["event_1"] == publisher.published

    async def test_a_failed_publish_fails_every_copy(self) -> None:
        """Concurrent copies share the failure, so the provider retries all of them."""
        publisher = GatedPublisher(fail=BrokerUnavailable("down"))
        once = PublishOnce(publisher=publisher, redis=None)
        tasks = [asyncio.create_task(once.publish(event())) for _ in range(3)]
        await all_started(tasks)  # type: ignore[arg-type]
        publisher.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, BrokerUnavailable) for r in results)


class TestRedisClaim:
    async def test_redelivery_after_success_is_a_duplicate(self) -> None:
        """Once published, a later copy is answered without a second record."""
        publisher, redis = GatedPublisher(), FakeRedis()
        publisher.gate.set()
        once = PublishOnce(publisher=publisher, redis=redis, key_prefix="d:")  # type: ignore[arg-type]
        assert "published" == await once.publish(event())
        assert "duplicate" == await once.publish(event())
        assert b"done" == redis.data["d:workos:event_1"]
        assert ["event_1"] == publisher.published

    async def test_failed_publish_releases_the_claim(self) -> None:
        """After a 503 the provider's retry is published, not refused as a duplicate."""
        publisher, redis = GatedPublisher(fail=BrokerUnavailable("down")), FakeRedis()
        publisher.gate.set()
        once = PublishOnce(publisher=publisher, redis=redis)  # type: ignore[arg-type]
        with pytest.raises(BrokerUnavailable):
            await once.publish(event())
        assert {} == redis.data
        publisher.fail = None
        assert "published" == await once.publish(event())

    async def test_other_process_publishing_is_waited_for(self) -> None:
        """A claim held elsewhere that completes is answered as a duplicate."""
        publisher, redis = GatedPublisher(), FakeRedis()
        redis.data["propagator:dedupe:workos:event_1"] = b"pending"
        once = PublishOnce(publisher=publisher, redis=redis, wait_for_other_s=5)  # type: ignore[arg-type]
        waiting = asyncio.create_task(once.publish(event()))
        await asyncio.sleep(0)
        redis.data["propagator:dedupe:workos:event_1"] = b"done"
        assert "duplicate" == await waiting
        assert [] == publisher.published

    async def test_stuck_claim_elsewhere_is_a_503(self) -> None:
        """A claim that never completes makes the provider retry later."""
        redis = FakeRedis(data={"propagator:dedupe:workos:event_1": b"pending"})
        once = PublishOnce(publisher=GatedPublisher(), redis=redis, wait_for_other_s=0.1)  # type: ignore[arg-type]
        with pytest.raises(BrokerUnavailable):
            await once.publish(event())

    async def test_redis_down_publishes_anyway_and_counts(self) -> None:
        """Without Redis the event is still published (sinks are idempotent), and counted."""
        degraded: list[int] = []
        publisher = GatedPublisher()
        publisher.gate.set()
        once = PublishOnce(
            publisher=publisher,
            redis=FakeRedis(down=True),  # type: ignore[arg-type]
            on_degraded=lambda: degraded.append(1),
        )
        assert "published" == await once.publish(event())
        assert ["event_1"] == publisher.published
        assert [1] == degraded


async def test_extra_writes_share_the_done_round_trip() -> None:
    """Whatever else must be written on publish goes in the same pipeline as "done"."""
    publisher, redis = GatedPublisher(), FakeRedis()
    publisher.gate.set()
    extra: list[str] = []

    def also(pipe: object, ev: RevocationEvent) -> None:
        pipe.set(f"projection:{ev.event_id}", b"pending")  # type: ignore[attr-defined]
        extra.append(ev.event_id)

    once = PublishOnce(publisher=publisher, redis=redis, key_prefix="d:", also_on_publish=also)  # type: ignore[arg-type]
    assert "published" == await once.publish(event())
    assert ["event_1"] == extra
    assert {"d:workos:event_1": b"done", "projection:event_1": b"pending"} == redis.data
