"""Publishing once per event id: in-process coalescing and the Redis claim, with fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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
class FakeClaims:
    """The ClaimStore protocol over a dict; counts the batch calls."""

    data: dict[str, bytes] = field(default_factory=dict)
    down: bool = False
    claim_calls: list[int] = field(default_factory=list)
    done_calls: list[int] = field(default_factory=list)

    def _check(self) -> None:
        if self.down:
            raise RedisConnectionError("down")

    async def claim(self, keys: Sequence[str], ttl_s: int) -> list[bool]:
        self._check()
        self.claim_calls.append(len(keys))
        claimed = []
        for key in keys:
            claimed.append(key not in self.data)
            self.data.setdefault(key, b"pending")
        return claimed

    async def mark_done(self, keys: Sequence[str], ttl_s: int) -> None:
        self._check()
        self.done_calls.append(len(keys))
        self.data.update(dict.fromkeys(keys, b"done"))

    async def state(self, key: str) -> bytes | None:
        self._check()
        return self.data.get(key)

    async def release(self, key: str) -> None:
        self._check()
        self.data.pop(key, None)


async def all_started(tasks: list[asyncio.Task[object]]) -> None:
    # One turn of the loop runs every task up to its first real wait.
    await asyncio.sleep(0)


class TestInProcess:
    async def test_concurrent_copies_share_one_publish(self) -> None:
        """50 concurrent copies of one event: 1 published, 49 duplicates."""
        publisher = GatedPublisher()
        once = PublishOnce(publisher=publisher, claims=None)
        tasks = [asyncio.create_task(once.publish(event())) for _ in range(50)]
        await all_started(tasks)
        publisher.gate.set()
        results = await asyncio.gather(*tasks)
        assert 1 == results.count("published")
        assert 49 == results.count("duplicate")
        assert ["event_1"] == publisher.published

    async def test_a_failed_publish_fails_every_copy(self) -> None:
        """Concurrent copies share the failure, so the provider retries all of them."""
        publisher = GatedPublisher(fail=BrokerUnavailable("down"))
        once = PublishOnce(publisher=publisher, claims=None)
        tasks = [asyncio.create_task(once.publish(event())) for _ in range(3)]
        await all_started(tasks)
        publisher.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, BrokerUnavailable) for r in results)


class TestRedisClaim:
    async def test_redelivery_after_success_is_a_duplicate(self) -> None:
        """Once published, a later copy is answered without a second record."""
        publisher, claims = GatedPublisher(), FakeClaims()
        publisher.gate.set()
        once = PublishOnce(publisher=publisher, claims=claims, key_prefix="d:")
        assert "published" == await once.publish(event())
        await once.settle()
        assert "duplicate" == await once.publish(event())
        assert b"done" == claims.data["d:workos:event_1"]
        assert ["event_1"] == publisher.published

    async def test_failed_publish_releases_the_claim(self) -> None:
        """After a 503 the provider's retry is published, not refused as a duplicate."""
        publisher, claims = GatedPublisher(fail=BrokerUnavailable("down")), FakeClaims()
        publisher.gate.set()
        once = PublishOnce(publisher=publisher, claims=claims)
        with pytest.raises(BrokerUnavailable):
            await once.publish(event())
        assert {} == claims.data
        publisher.fail = None
        assert "published" == await once.publish(event())

    async def test_other_process_publishing_is_waited_for(self) -> None:
        """A claim held elsewhere that completes is answered as a duplicate."""
        publisher, claims = GatedPublisher(), FakeClaims()
        claims.data["propagator:dedupe:workos:event_1"] = b"pending"
        once = PublishOnce(publisher=publisher, claims=claims, wait_for_other_s=5)
        waiting = asyncio.create_task(once.publish(event()))
        await asyncio.sleep(0)
        claims.data["propagator:dedupe:workos:event_1"] = b"done"
        assert "duplicate" == await waiting
        assert [] == publisher.published

    async def test_stuck_claim_elsewhere_is_a_503(self) -> None:
        """A claim that never completes makes the provider retry later."""
        claims = FakeClaims(data={"propagator:dedupe:workos:event_1": b"pending"})
        once = PublishOnce(publisher=GatedPublisher(), claims=claims, wait_for_other_s=0.1)
        with pytest.raises(BrokerUnavailable):
            await once.publish(event())

    async def test_redis_down_publishes_anyway_and_counts(self) -> None:
        """Without Redis the event is still published (sinks are idempotent), and counted."""
        degraded: list[int] = []
        publisher = GatedPublisher()
        publisher.gate.set()
        once = PublishOnce(
            publisher=publisher,
            claims=FakeClaims(down=True),
            on_degraded=lambda: degraded.append(1),
        )
        assert "published" == await once.publish(event())
        assert ["event_1"] == publisher.published
        assert [1] == degraded


async def test_extra_writes_are_made_with_the_done_marks() -> None:
    """Whatever else must be written on publish is written with the batch's "done" marks."""
    publisher, claims = GatedPublisher(), FakeClaims()
    publisher.gate.set()
    noted: list[list[str]] = []

    async def also(events: Sequence[RevocationEvent]) -> None:
        noted.append([e.event_id for e in events])

    once = PublishOnce(publisher=publisher, claims=claims, key_prefix="d:", also_on_publish=also)
    assert "published" == await once.publish(event())
    await once.settle()
    assert [["event_1"]] == noted
    assert {"d:workos:event_1": b"done"} == claims.data


async def test_requests_of_one_loop_turn_share_a_claim_and_a_done_call() -> None:
    """40 distinct events arriving together cost one claim call and one done call, not 40."""
    publisher, claims = GatedPublisher(), FakeClaims()
    publisher.gate.set()
    once = PublishOnce(publisher=publisher, claims=claims, key_prefix="d:")
    results = await asyncio.gather(*(once.publish(event(f"e{i}")) for i in range(40)))
    assert ["published"] * 40 == results
    await once.settle()
    assert [40] == claims.claim_calls
    assert [40] == claims.done_calls
    assert sorted(f"e{i}" for i in range(40)) == sorted(publisher.published)


async def test_the_answer_does_not_wait_for_the_done_mark() -> None:
    """Published is answered once the broker acknowledged, while the mark is still being
    written; a copy that arrives meanwhile is answered as a duplicate once it is written."""
    publisher, claims = GatedPublisher(), FakeClaims()
    publisher.gate.set()
    once = PublishOnce(publisher=publisher, claims=claims, key_prefix="d:", wait_for_other_s=5)
    marking = asyncio.Event()
    mark_done = claims.mark_done

    async def held_mark_done(keys: Sequence[str], ttl_s: int) -> None:
        await marking.wait()
        await mark_done(keys, ttl_s)

    claims.mark_done = held_mark_done  # type: ignore[method-assign]
    assert "published" == await once.publish(event())
    assert b"pending" == claims.data["d:workos:event_1"]
    copy = asyncio.create_task(once.publish(event()))
    marking.set()
    await once.settle()
    assert b"done" == claims.data["d:workos:event_1"]
    assert "duplicate" == await copy
    assert ["event_1"] == publisher.published


async def test_a_failed_done_mark_is_counted() -> None:
    """A mark that cannot be written is counted as degraded, never raised to the caller."""
    degraded: list[int] = []
    publisher, claims = GatedPublisher(), FakeClaims()
    publisher.gate.set()
    once = PublishOnce(publisher=publisher, claims=claims, on_degraded=lambda: degraded.append(1))
    claims.mark_done = _failing  # type: ignore[method-assign]
    assert "published" == await once.publish(event())
    await once.settle()
    assert [1] == degraded


async def _failing(keys: Sequence[str], ttl_s: int) -> None:
    raise RedisConnectionError("down")


async def test_a_failed_batch_claim_degrades_every_request_of_the_batch() -> None:
    """When the batch's claim call fails, each request publishes anyway and is counted."""
    degraded: list[int] = []
    publisher = GatedPublisher()
    publisher.gate.set()
    once = PublishOnce(
        publisher=publisher,
        claims=FakeClaims(down=True),
        on_degraded=lambda: degraded.append(1),
    )
    results = await asyncio.gather(*(once.publish(event(f"e{i}")) for i in range(5)))
    assert ["published"] * 5 == results
    assert 5 == len(degraded)


async def test_done_marks_of_a_window_share_one_call() -> None:
    """Marks gather for the window (nobody waits for them): requests answered one after the
    other still share a script call; settle() writes what is gathered at once."""
    publisher, claims = GatedPublisher(), FakeClaims()
    publisher.gate.set()
    once = PublishOnce(publisher=publisher, claims=claims, key_prefix="d:", done_window_s=60)
    for i in range(3):
        assert "published" == await once.publish(event(f"e{i}"))
    assert [] == claims.done_calls
    assert b"pending" == claims.data["d:workos:e0"]
    await once.settle()
    assert [3] == claims.done_calls
    assert all(claims.data[f"d:workos:e{i}"] == b"done" for i in range(3))
