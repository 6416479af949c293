"""The revocation guard against a fake Redis: decisions, cache, push, re-sync, staleness, policy."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from propagator.guard import Decision, Reason, RevocationGuard
from tests.unit.guard_fakes import KEYS, FakeRedis, make_guard, wait_for

T = 1_700_000_000  # a token's iat, epoch seconds
T_MS = T * 1000


@pytest.fixture
def redis() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
async def guard(redis: FakeRedis) -> AsyncIterator[RevocationGuard]:
    async with make_guard(redis) as guard:
        yield guard


async def notices_seen(guard: RevocationGuard, count: int) -> None:
    await wait_for(lambda: guard.stats.notices + guard.stats.malformed_notices >= count)


class TestDecisions:
    async def test_session_key_revokes_with_its_record(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """A session key in the denylist refuses the session and names the event."""
        redis.revoke_session("session_1", event_id="event_42")
        decision = await guard.check("session_1", "user_1", issued_at=T)
        assert Reason.SESSION == decision.reason
        assert decision.revoked
        assert not decision.allowed
        assert "event_42" == decision.event_id
        assert 1_796_126_400_000 == decision.revoked_at_ms  # 2026-12-01T12:00:00Z

    async def test_unreadable_session_record_still_revokes(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """The key's existence is what revokes; a record that is not JSON changes nothing."""
        redis.store[KEYS.session("session_1")] = b"\xff not json"
        assert Reason.SESSION == (await guard.check("session_1")).reason

    async def test_user_watermark_refuses_sessions_issued_before_it(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """iat * 1000 < watermark refuses; a token from the next second on is allowed."""
        redis.raise_watermark("user", "user_1", T_MS + 500)
        before = await guard.check("session_1", "user_1", issued_at=T - 60)
        assert Reason.USER_WATERMARK == before.reason
        assert T_MS + 500 == before.revoked_at_ms
        assert (await guard.check("session_2", "user_1", issued_at=T + 1)).allowed

    async def test_same_second_as_the_watermark_is_refused(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """iat is truncated to the second, so the watermark's own second errs on refusing."""
        redis.raise_watermark("user", "user_1", T_MS + 500)
        # Issued at T + 0.7 s (after the watermark), the token still says iat = T.
        assert Reason.USER_WATERMARK == (await guard.check("s", "user_1", issued_at=T)).reason

    async def test_watermark_equal_to_iat_allows(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """A watermark at exactly iat * 1000 does not cover the token."""
        redis.raise_watermark("user", "user_1", T_MS)
        assert (await guard.check("s", "user_1", issued_at=T)).allowed

    async def test_organization_watermark_refuses(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """A session issued before its organization's watermark is refused."""
        redis.raise_watermark("organization", "org_1", T_MS)
        decision = await guard.check("s", "user_1", "org_1", issued_at=T - 1)
        assert Reason.ORGANIZATION_WATERMARK == decision.reason
        assert (await guard.check("s2", "user_1", "org_1", issued_at=T)).allowed

    @pytest.mark.parametrize("issued_at", [None, math.nan])
    async def test_unknown_issue_time_is_refused_by_any_watermark(
        self, guard: RevocationGuard, redis: FakeRedis, issued_at: float | None
    ) -> None:
        """Without a usable iat nothing proves the session newer than the watermark."""
        redis.raise_watermark("user", "user_1", T_MS)
        assert Reason.USER_WATERMARK == (await guard.check("s", "user_1", None, issued_at)).reason

    async def test_nothing_recorded_is_allowed(self, guard: RevocationGuard) -> None:
        """No key for the session, user or organization: allowed."""
        decision = await guard.check("s", "user_1", "org_1", issued_at=T)
        assert Decision(allowed=True, reason=Reason.NOT_REVOKED) == decision
        assert not decision.revoked

    async def test_no_identifiers_is_allowed_without_reading_redis(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """A check naming nothing has nothing to look up."""
        assert (await guard.check(None)).allowed
        assert [] == redis.reads

    async def test_one_read_per_check_covers_every_key(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """Session, user and organization keys are fetched in one MGET."""
        await guard.check("s", "u", "o", issued_at=T)
        assert [[KEYS.session("s"), KEYS.user("u"), KEYS.organization("o")]] == redis.reads


class TestCache:
    async def test_second_check_is_served_from_memory(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """A cache hit costs no Redis round trip."""
        await guard.check("s", "u", "o", issued_at=T)
        assert (await guard.check("s", "u", "o", issued_at=T)).allowed
        assert 1 == len(redis.reads)
        assert 1 == guard.stats.cache_hits

    async def test_cached_refusal_is_served_from_memory(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """Revoked sessions are cached too."""
        redis.revoke_session("s")
        await guard.check("s")
        assert Reason.SESSION == (await guard.check("s")).reason
        assert 1 == len(redis.reads)

    async def test_cache_is_bounded(self, redis: FakeRedis) -> None:
        """Past max_entries the oldest entry goes (a hit does not renew it: the hit path moves
        nothing), and is read again when needed."""
        async with make_guard(redis, max_entries=2) as guard:
            for session in ("s1", "s2", "s1", "s3"):  # s1 is still the oldest entry
                await guard.check(session)
            assert 3 == len(redis.reads)
            await guard.check("s2")
            await guard.check("s3")
            assert 3 == len(redis.reads)
            await guard.check("s1")
            assert 4 == len(redis.reads)

    async def test_evicted_revocation_is_read_again(self, redis: FakeRedis) -> None:
        """Eviction never forgets a revocation: Redis still holds it."""
        redis.revoke_session("s1")
        async with make_guard(redis, max_entries=1) as guard:
            assert Reason.SESSION == (await guard.check("s1")).reason
            await guard.check("s2")
            assert Reason.SESSION == (await guard.check("s1")).reason
            assert 3 == len(redis.reads)


class TestPush:
    async def test_session_notice_refuses_a_cached_session_without_a_read(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """An allowed session, cached, is refused as soon as its notice arrives."""
        assert (await guard.check("s", "u", issued_at=T)).allowed
        await redis.announce_session("s")
        await notices_seen(guard, 1)
        assert Reason.SESSION == (await guard.check("s", "u", issued_at=T)).reason
        assert 1 == len(redis.reads)

    async def test_session_notice_for_an_unseen_session_is_cached(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """A revoked session never checked before is answered from memory."""
        await redis.announce_session("s")
        await notices_seen(guard, 1)
        assert Reason.SESSION == (await guard.check("s")).reason
        assert [] == redis.reads

    async def test_watermark_notice_raises_a_cached_user(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """A password reset refuses the user's earlier tokens without a read."""
        assert (await guard.check("s", "u", issued_at=T)).allowed
        await redis.announce_watermark("user", "u", T_MS + 1000)
        await notices_seen(guard, 1)
        assert Reason.USER_WATERMARK == (await guard.check("s", "u", issued_at=T)).reason
        assert (await guard.check("s2", "u", issued_at=T + 2)).allowed
        assert 2 == len(redis.reads)  # s2 was new; the user's watermark came by push

    async def test_late_notice_never_lowers_a_watermark(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """An out-of-order notice with an older watermark leaves the newer one in force."""
        redis.raise_watermark("user", "u", T_MS + 10_000)
        await guard.check("s", "u", issued_at=T)
        await redis.announce_watermark("user", "u", T_MS - 10_000, write=False)
        await notices_seen(guard, 1)
        assert Reason.USER_WATERMARK == (await guard.check("s", "u", issued_at=T + 5)).reason

    async def test_watermark_notice_for_an_uncached_user_is_not_trusted_alone(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """A notice may carry less than Redis holds; an uncached user is read from Redis."""
        redis.raise_watermark("user", "u", T_MS + 10_000)
        await redis.announce_watermark("user", "u", T_MS - 10_000, write=False)
        await notices_seen(guard, 1)
        assert Reason.USER_WATERMARK == (await guard.check("s", "u", issued_at=T)).reason

    async def test_malformed_notice_drops_cached_answers(
        self, guard: RevocationGuard, redis: FakeRedis, caplog: pytest.LogCaptureFixture
    ) -> None:
        """What an unreadable notice announced is unknown, so nothing cached is vouched for."""
        await guard.check("s")
        await redis.publish(KEYS.channel, b"{not json")
        await notices_seen(guard, 1)
        await guard.check("s")
        assert 2 == len(redis.reads)
        assert 1 == guard.stats.malformed_notices
        assert any("malformed notice" in r.getMessage() for r in caplog.records)


class TestResync:
    async def test_revocation_missed_while_disconnected_is_found_on_reconnect(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """A notice lost during a disconnect is made up for by re-reading cached entries."""
        assert (await guard.check("s", "u", issued_at=T)).allowed
        redis.unavailable = RedisConnectionError("down")
        redis.current.break_connection()
        await wait_for(lambda: guard.stats.disconnects >= 1)
        # Written while the guard cannot hear: its notice is lost for good.
        redis.revoke_session("s")
        redis.raise_watermark("user", "u", T_MS + 1000)
        redis.unavailable = None
        await wait_for(lambda: guard.stats.resyncs >= 2)
        reads = len(redis.reads)
        assert Reason.SESSION == (await guard.check("s", "u", issued_at=T)).reason
        assert Reason.USER_WATERMARK == (await guard.check("s2", "u", issued_at=T)).reason
        # Both from the re-synced cache: the user's watermark refuses s2 without reading it.
        assert reads == len(redis.reads)

    async def test_silent_resubscription_resyncs(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """redis-py re-subscribes by itself after a reconnect; that, too, triggers a re-sync."""
        assert (await guard.check("s")).allowed
        redis.revoke_session("s")  # written during redis-py's unseen reconnect
        redis.current.confirm_subscription(KEYS.channel)
        await wait_for(lambda: guard.stats.resyncs >= 2)
        assert Reason.SESSION == (await guard.check("s")).reason

    async def test_allowed_answers_read_while_unsubscribed_are_not_cached(
        self, redis: FakeRedis
    ) -> None:
        """Without a subscription nothing would correct a cached "allowed", so none is kept."""
        redis.refuse_subscriptions = True
        async with make_guard(redis, connect_timeout_s=0.05) as guard:
            for _ in range(2):
                assert (await guard.check("s")).allowed
            assert 2 == len(redis.reads)
            assert 0 == guard.stats.cache_hits


class TestStaleness:
    async def test_cached_allowed_is_not_trusted_once_pongs_stop(self, redis: FakeRedis) -> None:
        """Past max_staleness_s without a pong, an allowed answer is read from Redis again."""
        async with make_guard(redis, max_staleness_s=0.2) as guard:
            await guard.check("s")
            redis.answer_pings = False
            await wait_for(lambda: not guard.live)
            await guard.check("s")
            assert 2 == len(redis.reads)
            redis.answer_pings = True
            await wait_for(lambda: guard.live)
            await guard.check("s")
            assert 2 == len(redis.reads)

    async def test_silent_subscription_is_replaced(self, redis: FakeRedis) -> None:
        """A connection that stops answering pings is closed and a new one subscribes."""
        async with make_guard(redis, max_staleness_s=0.1) as guard:
            first = redis.current
            redis.answer_pings = False
            await wait_for(lambda: guard.stats.disconnects >= 1)
            redis.answer_pings = True
            await wait_for(lambda: guard.live)
            assert first.closed
            assert first is not redis.current


class TestFailurePolicy:
    async def test_fails_closed_by_default(
        self, guard: RevocationGuard, redis: FakeRedis, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Redis unreachable and nothing cached: refused, counted and logged, but not revoked."""
        redis.unavailable = RedisConnectionError("down")
        decision = await guard.check("s", "u", issued_at=T)
        assert Reason.FAIL_CLOSED == decision.reason
        assert not decision.allowed
        assert not decision.revoked
        assert 1 == guard.stats.fail_closed
        [record] = [r for r in caplog.records if "fail-closed" in r.getMessage()]
        assert "propagator.guard" == record.name
        assert logging.WARNING == record.levelno
        assert "fail-closed" in record.getMessage()

    async def test_fails_open_when_configured(
        self, redis: FakeRedis, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With fail_open=True the same check is allowed, counted and logged."""
        async with make_guard(redis, fail_open=True) as guard:
            redis.unavailable = RedisConnectionError("down")
            decision = await guard.check("s", "u", issued_at=T)
        assert Reason.FAIL_OPEN == decision.reason
        assert decision.allowed
        assert 1 == guard.stats.fail_open
        assert any("fail-open" in r.getMessage() for r in caplog.records)

    async def test_log_line_is_rate_limited_but_every_check_counted(
        self, guard: RevocationGuard, redis: FakeRedis, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An outage under load logs once per interval, not once per request."""
        redis.unavailable = RedisConnectionError("down")
        for n in range(5):
            await guard.check(f"s{n}")
        assert 5 == guard.stats.fail_closed
        assert 1 == sum("fail-closed" in r.getMessage() for r in caplog.records)

    async def test_slow_redis_counts_as_unavailable(self, redis: FakeRedis) -> None:
        """A read that outlasts redis_timeout_s meets the failure policy."""
        async with make_guard(redis, redis_timeout_s=0.05) as guard:
            redis.hang = asyncio.Event()
            assert Reason.FAIL_CLOSED == (await guard.check("s")).reason

    async def test_cached_revocation_holds_while_redis_is_down(self, redis: FakeRedis) -> None:
        """A revocation the cache holds needs no Redis: it is refused as revoked, not by policy."""
        redis.revoke_session("s")
        async with make_guard(redis, max_staleness_s=0.1) as guard:
            await guard.check("s")
            redis.unavailable = RedisConnectionError("down")
            redis.current.break_connection()
            await wait_for(lambda: not guard.live)
            assert Reason.SESSION == (await guard.check("s")).reason
            assert 0 == guard.stats.fail_closed

    async def test_stale_allowed_meets_the_policy_when_redis_is_down(
        self, redis: FakeRedis
    ) -> None:
        """A cached "allowed" that is too old to vouch for is not served during an outage."""
        async with make_guard(redis, max_staleness_s=0.1) as guard:
            await guard.check("s")
            redis.unavailable = RedisConnectionError("down")
            redis.current.break_connection()
            await wait_for(lambda: not guard.live)
            assert Reason.FAIL_CLOSED == (await guard.check("s")).reason

    async def test_malformed_watermark_meets_the_policy(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """A watermark that is not a number cannot vouch for anything."""
        redis.store[KEYS.user("u")] = b"yesterday"
        assert Reason.FAIL_CLOSED == (await guard.check("s", "u", issued_at=T)).reason


class TestLifecycle:
    async def test_check_before_start_raises(self, redis: FakeRedis) -> None:
        """Checking with a guard that was never started is a programming error."""
        with pytest.raises(RuntimeError, match="not started"):
            await make_guard(redis).check("s")

    @pytest.mark.parametrize(
        "options",
        [
            {"max_staleness_s": 0},
            {"redis_timeout_s": -1},
            {"connect_timeout_s": 0},
            {"max_backoff_s": 0},
            {"max_entries": 0},
        ],
    )
    def test_invalid_options_are_refused_eagerly(
        self, redis: FakeRedis, options: dict[str, Any]
    ) -> None:
        """Bad settings fail at construction, not at the first request."""
        with pytest.raises(ValueError, match="must be"):
            make_guard(redis, **options)

    async def test_start_waits_for_the_first_sync(self, redis: FakeRedis) -> None:
        """Once start() returns the guard is subscribed, synced and serving from memory."""
        guard = make_guard(redis)
        await guard.start()
        try:
            assert guard.live
            assert 1 == guard.stats.resyncs
            assert {KEYS.channel} == redis.current.channels
        finally:
            await guard.stop()

    async def test_stop_closes_the_subscription_and_is_idempotent(self, redis: FakeRedis) -> None:
        """stop() ends the subscription task and closes its connection; twice is harmless."""
        guard = make_guard(redis)
        await guard.start()
        await guard.stop()
        await guard.stop()
        assert all(p.closed for p in redis.pubsubs)
        assert not redis.closed  # the client was handed in, so its owner closes it
        with pytest.raises(RuntimeError, match="cannot be restarted"):
            await guard.start()

    async def test_start_twice_raises(self, guard: RevocationGuard) -> None:
        """A second start() is a programming error."""
        with pytest.raises(RuntimeError, match="already started"):
            await guard.start()

    async def test_starts_while_redis_is_down_and_catches_up(
        self, redis: FakeRedis, caplog: pytest.LogCaptureFixture
    ) -> None:
        """start() does not hang or raise when Redis is down; the guard subscribes later."""
        redis.unavailable = RedisConnectionError("down")
        async with make_guard(redis, connect_timeout_s=0.05) as guard:
            assert not guard.live
            assert any("not subscribed" in r.getMessage() for r in caplog.records)
            assert Reason.FAIL_CLOSED == (await guard.check("s")).reason
            redis.unavailable = None
            await wait_for(lambda: guard.live)
            assert (await guard.check("s")).allowed

    async def test_lifespan_starts_and_stops(self, redis: FakeRedis) -> None:
        """guard.lifespan(app) is the async context manager FastAPI's lifespan= expects."""
        guard = make_guard(redis)
        async with guard.lifespan(object()) as state:
            assert state is None
            assert guard.live
        assert redis.current.closed
