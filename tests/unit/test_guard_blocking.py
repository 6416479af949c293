"""The blocking guard that Flask and Django views call, over a fake Redis."""

from __future__ import annotations

import asyncio
import threading

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from propagator.guard import BlockingRevocationGuard, Reason
from tests.unit.guard_fakes import FakeRedis, make_guard


class TestBlockingGuard:
    def test_checks_from_synchronous_code(self) -> None:
        """A plain function gets the same decisions, served from the guard's own thread."""
        redis = FakeRedis()
        redis.revoke_session("session_revoked")
        with BlockingRevocationGuard(factory=lambda: make_guard(redis)) as guard:
            assert Reason.SESSION == guard.check("session_revoked").reason
            assert guard.check("session_ok", "user_1", issued_at=1.0).allowed
            assert guard.check("session_ok", "user_1", issued_at=1.0).allowed
            assert 1 == guard.stats.cache_hits
        assert redis.current.closed

    def test_guard_runs_on_its_own_thread_and_stops_it(self) -> None:
        """start() adds one thread; stop() ends it."""
        before = threading.active_count()
        guard = BlockingRevocationGuard(factory=lambda: make_guard(FakeRedis()))
        guard.start()
        assert before + 1 == threading.active_count()
        guard.stop()
        guard.stop()
        assert before == threading.active_count()
        with pytest.raises(RuntimeError, match="not started"):
            guard.check("s")

    def test_failure_policy_applies(self) -> None:
        """Redis down: the guard's policy answers, as it does for async callers."""
        redis = FakeRedis()
        with BlockingRevocationGuard(factory=lambda: make_guard(redis)) as guard:
            redis.unavailable = RedisConnectionError("down")
            assert Reason.FAIL_CLOSED == guard.check("s").reason
            assert 1 == guard.stats.fail_closed

    def test_stalled_check_meets_the_policy_after_check_timeout(self) -> None:
        """If the guard does not answer in check_timeout_s, the caller is not held hostage."""
        redis = FakeRedis()
        blocking = BlockingRevocationGuard(
            factory=lambda: make_guard(redis, redis_timeout_s=30.0, fail_open=True),
            check_timeout_s=0.05,
        )
        with blocking as guard:
            redis.hang = asyncio.Event()  # the read never returns on its own
            assert Reason.FAIL_OPEN == guard.check("s").reason
            assert 1 == guard.stats.fail_open

    def test_invalid_timeout_is_refused(self) -> None:
        """check_timeout_s must be positive."""
        with pytest.raises(ValueError, match="must be positive"):
            BlockingRevocationGuard(factory=lambda: make_guard(FakeRedis()), check_timeout_s=0)
