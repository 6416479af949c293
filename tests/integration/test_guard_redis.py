"""The sink's notices and the guard, against the real Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from consumers.sinks import RedisDenylistSink
from propagator.guard import Reason, RevocationGuard
from schemas import RevocationEvent, RevocationScope
from tests.integration.conftest import REDIS_URL, wait_for

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
EARLIER = (NOW - timedelta(minutes=5)).timestamp()


def event(
    scope: RevocationScope, *, session_id: str = "session_1", at: datetime = NOW
) -> RevocationEvent:
    return RevocationEvent(
        event_id=f"event_{scope.value}",
        source="workos",
        source_kind="workos",
        type="session.revoked" if scope is RevocationScope.SESSION else "user.deleted",
        scope=scope,
        session_id=session_id if scope is RevocationScope.SESSION else None,
        user_id="user_1",
        organization_id="org_1",
        occurred_at=at,
        received_at=at,
        payload_sha256="0" * 64,
    )


@pytest.fixture
def prefix(unique: str) -> str:
    return f"test:{unique}:revoked:"


@pytest.fixture
def sink(redis: Redis, prefix: str) -> RedisDenylistSink:
    return RedisDenylistSink(redis=redis, key_prefix=prefix, ttl_s=600)


@pytest.fixture
async def guard_client(unique: str) -> AsyncIterator[Redis]:
    # Named, so that a test can find and kill exactly this guard's connections.
    client = Redis.from_url(REDIS_URL, client_name=f"guard-{unique}")
    yield client
    await client.aclose()


@pytest.fixture
async def guard(guard_client: Redis, prefix: str) -> AsyncIterator[RevocationGuard]:
    async with RevocationGuard(redis=guard_client, key_prefix=prefix) as guard:
        yield guard


class TestNotices:
    async def test_sink_announces_every_applied_revocation(
        self, sink: RedisDenylistSink, redis: Redis, prefix: str
    ) -> None:
        """Each scope's notice goes to {prefix}events in the documented shape, matching the key."""
        assert f"{prefix}events" == sink.channel
        listener = redis.pubsub()
        await listener.subscribe(sink.channel)
        try:
            await sink.apply([event(s) for s in RevocationScope])
            notices: list[dict[str, object]] = []

            async def three() -> bool:
                message = await listener.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if message is not None:
                    notices.append(json.loads(message["data"]))
                return len(notices) == 3

            await wait_for(three, timeout=10)
        finally:
            await listener.aclose()
        session, user, organization = notices
        assert {"version", "scope", "subject", "event_id", "record"} == set(session)
        assert ("session", "session_1") == (session["scope"], session["subject"])
        stored = json.loads(await redis.get(sink.session_key("session_1")))
        assert stored == session["record"]
        watermark_ms = int(NOW.timestamp() * 1000)
        for notice, scope, subject in (
            (user, RevocationScope.USER, "user_1"),
            (organization, RevocationScope.ORGANIZATION, "org_1"),
        ):
            assert {"version", "scope", "subject", "event_id", "watermark_ms"} == set(notice)
            assert (scope.value, subject, watermark_ms) == (
                notice["scope"],
                notice["subject"],
                notice["watermark_ms"],
            )
            assert watermark_ms == int(await redis.get(sink.watermark_key(scope, subject)))


class TestGuardOnRealRedis:
    async def test_session_revocation_reaches_a_cached_guard_by_push(
        self, guard: RevocationGuard, sink: RedisDenylistSink
    ) -> None:
        """A session checked (and cached) as allowed is refused once the sink applies its event."""
        assert (await guard.check("session_1", "user_1", "org_1", EARLIER)).allowed
        await sink.apply([event(RevocationScope.SESSION)])
        await wait_for(lambda: _true(guard.stats.notices >= 1), timeout=10)
        decision = await guard.check("session_1", "user_1", "org_1", EARLIER)
        assert Reason.SESSION == decision.reason
        assert "event_session" == decision.event_id
        assert 1 == guard.stats.redis_reads  # the refusal came by push

    async def test_user_watermark_refuses_only_earlier_sessions(
        self, guard: RevocationGuard, sink: RedisDenylistSink
    ) -> None:
        """After a user-scope revocation, sessions issued before it are refused, later ones not."""
        assert (await guard.check("session_1", "user_1", None, EARLIER)).allowed
        await sink.apply([event(RevocationScope.USER)])
        await wait_for(lambda: _true(guard.stats.notices >= 1), timeout=10)
        before = await guard.check("session_1", "user_1", None, EARLIER)
        assert Reason.USER_WATERMARK == before.reason
        assert (await guard.check("session_2", "user_1", None, NOW.timestamp())).allowed

    async def test_killed_subscription_resyncs_what_it_missed(
        self, guard: RevocationGuard, guard_client: Redis, redis: Redis, unique: str
    ) -> None:
        """A revocation whose notice never arrived is found when the connection is re-made."""
        assert (await guard.check("session_lost", None, None, EARLIER)).allowed
        # Written without a notice: as if the notice were published during a disconnect.
        await redis.set(f"test:{unique}:revoked:session:session_lost", "{}", ex=600)
        assert (await guard.check("session_lost", None, None, EARLIER)).allowed  # still cached
        resyncs = guard.stats.resyncs
        killed = 0
        for client in await redis.client_list():
            if client.get("name") == f"guard-{unique}" and "P" in client.get("flags", ""):
                await redis.client_kill_filter(_id=client["id"])
                killed += 1
        assert 1 == killed
        await wait_for(lambda: _true(guard.stats.resyncs > resyncs), timeout=10)
        assert Reason.SESSION == (await guard.check("session_lost", None, None, EARLIER)).reason

    async def test_client_decoding_responses_works_too(
        self, sink: RedisDenylistSink, prefix: str
    ) -> None:
        """A client created with decode_responses=True reads the same contract."""
        client = Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            async with RevocationGuard(redis=client, key_prefix=prefix) as guard:
                await sink.apply([event(RevocationScope.SESSION, session_id="session_str")])
                assert Reason.SESSION == (await guard.check("session_str")).reason
                assert (await guard.check("session_other")).allowed
                await sink.apply([event(RevocationScope.SESSION, session_id="session_other")])
                await wait_for(lambda: _true(guard.stats.notices >= 2), timeout=10)
                assert Reason.SESSION == (await guard.check("session_other")).reason
        finally:
            await client.aclose()

    async def test_unreachable_redis_fails_closed(self) -> None:
        """Nothing listens on the port: start() returns, and checks are refused by policy."""
        async with RevocationGuard.from_url(
            "redis://127.0.0.1:1/0", connect_timeout_s=0.2, redis_timeout_s=0.2
        ) as guard:
            assert not guard.live
            decision = await guard.check("session_1", "user_1", None, EARLIER)
        assert Reason.FAIL_CLOSED == decision.reason
        assert 1 == guard.stats.fail_closed


async def _true(value: bool) -> bool:
    return value
