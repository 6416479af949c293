"""The revocation guard: answers "is this session revoked?" from memory, kept current by push.

How it stays current:

* it subscribes to the sink's notice channel, and applies every notice to its cache;
* on every (re)subscription it re-reads every cached entry from Redis, so a notice missed
  while disconnected cannot leave a stale "allowed" behind;
* it pings on the subscribed connection. Redis answers a PING after every notice published
  before it, so a PONG proves the cache reflects every revocation written before that PING
  was sent. A cached "allowed" is trusted only while that proof is at most
  ``max_staleness_s`` old; otherwise the check reads Redis.

So a check never misses a revocation that reached Redis more than ``max_staleness_s`` before
it; while the subscription is healthy, push brings it within milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from propagator.guard._cache import DenylistCache
from propagator.guard._contract import (
    DEFAULT_PREFIX,
    DenylistKeys,
    MalformedValue,
    parse_notice,
    session_decision,
    watermark,
)
from propagator.guard._decision import ALLOWED, FAIL_CLOSED, FAIL_OPEN, Decision, evaluate

_log = logging.getLogger("propagator.guard")

# Redis (and the network under it) fails in these ways; anything else is a bug and surfaces.
_UNAVAILABLE = (RedisError, OSError, TimeoutError)
_RESYNC_CHUNK = 1000
_MIN_BACKOFF_S = 0.05
_POLICY_LOG_EVERY_S = 10.0
_PING_PREFIX = "propagator-guard:"


@dataclass
class GuardStats:
    """Counts since start; an application exports them as its own metrics."""

    checks: int = 0
    cache_hits: int = 0
    redis_reads: int = 0
    fail_closed: int = 0
    """Checks refused because Redis could not be consulted and the cache could not vouch."""
    fail_open: int = 0
    """Checks allowed for the same reason, when the guard is configured to fail open."""
    notices: int = 0
    malformed_notices: int = 0
    resyncs: int = 0
    disconnects: int = 0


class _SubscriptionSilent(Exception):
    """The subscribed connection stopped answering pings; it is dropped and re-made."""


class RevocationGuard:
    """Checks sessions against the Redis denylist, from an in-process cache kept current by push.

    Create it once per process, ``start()`` it (or ``async with`` it) inside the running event
    loop, and call ``check()`` per request.
    """

    def __init__(
        self,
        *,
        redis: Redis,
        key_prefix: str = DEFAULT_PREFIX,
        fail_open: bool = False,
        max_staleness_s: float = 1.0,
        max_entries: int = 100_000,
        redis_timeout_s: float = 0.5,
        connect_timeout_s: float = 5.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        if max_staleness_s <= 0:
            raise ValueError("max_staleness_s must be positive")
        if redis_timeout_s <= 0:
            raise ValueError("redis_timeout_s must be positive")
        if connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be positive")
        if max_backoff_s < _MIN_BACKOFF_S:
            raise ValueError(f"max_backoff_s must be at least {_MIN_BACKOFF_S}")
        self._redis = redis
        self._keys = DenylistKeys(key_prefix)
        self._cache = DenylistCache(max_entries=max_entries)
        self._fail_open = fail_open
        self._max_staleness_s = max_staleness_s
        self._ping_interval_s = max_staleness_s / 4
        self._dead_after_s = max_staleness_s * 3
        self._redis_timeout_s = redis_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_backoff_s = max_backoff_s
        self._owns_redis = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._synced = asyncio.Event()
        # Every revocation written to Redis before this monotonic instant is in the cache.
        self._fresh_as_of = float("-inf")
        # Bumped whenever the subscription is made or lost; a read may insert "allowed" facts
        # only when no bump happened while it was in flight (see DenylistCache).
        self._epoch = 0
        self._subscribed = False
        self._next_policy_log = float("-inf")
        self._unreported = 0
        self.stats = GuardStats()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RevocationGuard:
        """A guard with its own Redis client, closed by ``stop()``; ``options`` as ``__init__``."""
        timeout = options.get("redis_timeout_s", 0.5)
        redis = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        guard = cls(redis=redis, **options)
        guard._owns_redis = True
        return guard

    @property
    def keys(self) -> DenylistKeys:
        return self._keys

    @property
    def live(self) -> bool:
        """Whether cached "allowed" answers are currently trusted without reading Redis."""
        return time.monotonic() - self._fresh_as_of <= self._max_staleness_s

    async def start(self) -> None:
        """Subscribe and sync, waiting up to ``connect_timeout_s`` for the first sync.

        When Redis does not answer in time the guard starts anyway and keeps reconnecting in
        the background; until it is synced, every check reads Redis, and the failure policy
        answers while Redis cannot be read.
        """
        if self._closed:
            raise RuntimeError("a stopped RevocationGuard cannot be restarted")
        if self._task is not None:
            raise RuntimeError("the RevocationGuard is already started")
        self._task = asyncio.create_task(self._listen_forever(), name="revocation-guard")
        self._task.add_done_callback(_report_crash)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._synced.wait()
        except TimeoutError:
            _log.warning(
                "revocation guard: not subscribed to %s after %.1fs; checks read Redis "
                "directly until it is",
                self._keys.channel,
                self._connect_timeout_s,
            )

    async def stop(self) -> None:
        """Unsubscribe and close what the guard owns. Safe to call more than once."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if self._owns_redis:
            self._owns_redis = False
            await self._redis.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Start and stop with an application: ``FastAPI(lifespan=guard.lifespan)``."""
        async with self:
            yield

    async def check(
        self,
        session_id: str | None,
        user_id: str | None = None,
        org_id: str | None = None,
        issued_at: float | None = None,
    ) -> Decision:
        """Whether a session may be used: from the cache when it can vouch, else from Redis.

        ``issued_at`` is the session's (or token's) issue time in epoch seconds, a JWT's
        ``iat``; a session whose issue time is unknown is refused by any watermark covering
        its user or organization.
        """
        if self._task is None:
            raise RuntimeError("the RevocationGuard is not started: call start() first")
        self.stats.checks += 1
        decision = self._cache.decide(session_id, user_id, org_id, issued_at)
        # A cached refusal holds whatever its age: the denylist only grows stricter.
        if decision is not None and (
            not decision.allowed or time.monotonic() - self._fresh_as_of <= self._max_staleness_s
        ):
            self.stats.cache_hits += 1
            return decision
        return await self._read(session_id, user_id, org_id, issued_at)

    async def _read(
        self,
        session_id: str | None,
        user_id: str | None,
        org_id: str | None,
        issued_at: float | None,
    ) -> Decision:
        keys = []
        if session_id is not None:
            keys.append(self._keys.session(session_id))
        if user_id is not None:
            keys.append(self._keys.user(user_id))
        if org_id is not None:
            keys.append(self._keys.organization(org_id))
        if not keys:
            return ALLOWED
        epoch = self._epoch if self._subscribed else -1
        self.stats.redis_reads += 1
        try:
            async with asyncio.timeout(self._redis_timeout_s):
                values = list(await self._redis.mget(keys))
            session = None
            if session_id is not None:
                raw = values.pop(0)
                session = None if raw is None else session_decision(raw)
            user_ms = watermark(values.pop(0)) if user_id is not None else 0
            org_ms = watermark(values.pop(0)) if org_id is not None else 0
        except (*_UNAVAILABLE, MalformedValue) as exc:
            decision = self._cache.decide(session_id, user_id, org_id, issued_at)
            if decision is not None and not decision.allowed:
                return decision
            return self._unavailable(exc)
        trusted = epoch == self._epoch
        cache = self._cache
        if session_id is not None:
            cache.store_session(session_id, session, trusted=trusted)
            session = session or cache.cached_session(session_id)
        if user_id is not None:
            cache.store_watermark("user", user_id, user_ms, trusted=trusted)
            user_ms = max(user_ms, cache.cached_watermark("user", user_id))
        if org_id is not None:
            cache.store_watermark("organization", org_id, org_ms, trusted=trusted)
            org_ms = max(org_ms, cache.cached_watermark("organization", org_id))
        return evaluate(session, user_ms, org_ms, issued_at)

    def _unavailable(self, cause: BaseException | str) -> Decision:
        # Called from other threads by BlockingRevocationGuard too; a lost increment there is
        # harmless, a lock on the hot path would not be.
        if self._fail_open:
            self.stats.fail_open += 1
            decision, policy = FAIL_OPEN, "allowed (fail-open)"
        else:
            self.stats.fail_closed += 1
            decision, policy = FAIL_CLOSED, "refused (fail-closed)"
        now = time.monotonic()
        if now >= self._next_policy_log:
            _log.warning(
                "revocation check %s: Redis could not be consulted and the cache cannot vouch "
                "(%s)%s",
                policy,
                cause,
                f"; {self._unreported} more since the last report" if self._unreported else "",
            )
            self._next_policy_log = now + _POLICY_LOG_EVERY_S
            self._unreported = 0
        else:
            self._unreported += 1
        return decision

    async def _listen_forever(self) -> None:
        backoff = _MIN_BACKOFF_S
        while True:
            pubsub = self._redis.pubsub()
            epoch = self._epoch
            error = "the subscription ended"
            try:
                await self._listen(pubsub)
            except (*_UNAVAILABLE, _SubscriptionSilent) as exc:
                error = f"{type(exc).__name__}: {exc}"
            finally:
                if self._subscribed:
                    self._subscribed = False
                    self._epoch += 1
                # Through a typed name: some redis-py releases leave aclose untyped.
                close: Callable[[], Awaitable[None]] = pubsub.aclose
                await close()
            if self._epoch != epoch:  # it had subscribed: a fresh outage, so retry at once
                backoff = _MIN_BACKOFF_S
                self.stats.disconnects += 1
                what = "lost its subscription to"
            else:
                what = "cannot subscribe to"
            delay = backoff * random.uniform(0.5, 1.0)
            _log.warning(
                "revocation guard %s %s (%s); retrying in %.2fs",
                what,
                self._keys.channel,
                error,
                delay,
            )
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self._max_backoff_s)

    async def _listen(self, pubsub: PubSub) -> None:
        async with asyncio.timeout(self._connect_timeout_s):
            await pubsub.subscribe(self._keys.channel)
        pings: dict[str, float] = {}
        sequence = 0
        heard = next_ping = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_ping:
                if now - heard > self._dead_after_s:
                    raise _SubscriptionSilent(f"no answer for {now - heard:.1f}s")
                sequence += 1
                token = f"{_PING_PREFIX}{sequence}"
                pings[token] = now
                async with asyncio.timeout(self._redis_timeout_s):
                    await pubsub.ping(token)
                next_ping = now + self._ping_interval_s
            message = await pubsub.get_message(timeout=max(next_ping - time.monotonic(), 0.0))
            if message is None:
                continue
            heard = time.monotonic()
            kind = message["type"]
            if kind == "message":
                self._on_notice(message["data"])
            elif kind == "pong":
                self._on_pong(pings, message["data"])
            elif kind == "subscribe":
                # Also sent when redis-py reconnects and re-subscribes on its own: whatever
                # was published in between is lost, so every (re)subscription re-syncs.
                self._subscribed = True
                self._epoch += 1
                await self._resync()
                heard = time.monotonic()

    def _on_notice(self, data: bytes | str) -> None:
        try:
            notice = parse_notice(data)
        except MalformedValue as exc:
            # Whatever it announced is unknown, so no cached "allowed" can be vouched for.
            self.stats.malformed_notices += 1
            self._cache.clear()
            _log.warning("revocation guard: malformed notice dropped the cache (%s)", exc)
            return
        self.stats.notices += 1
        self._cache.apply(notice)

    def _on_pong(self, pings: dict[str, float], data: bytes | str) -> None:
        token = data.decode() if isinstance(data, bytes) else data
        sent = pings.pop(token, None)
        if sent is None:
            return
        # Pongs come in order: any older ping still waiting was lost with a connection.
        for stale in [t for t, at in pings.items() if at < sent]:
            del pings[stale]
        self._fresh_as_of = max(self._fresh_as_of, sent)

    async def _resync(self) -> None:
        started = time.monotonic()
        sessions, users, organizations = self._cache.ids()
        await self._resync_kind("session", sessions, self._keys.session)
        await self._resync_kind("user", users, self._keys.user)
        await self._resync_kind("organization", organizations, self._keys.organization)
        self._fresh_as_of = max(self._fresh_as_of, started)
        self.stats.resyncs += 1
        self._synced.set()
        _log.info(
            "revocation guard: subscribed to %s and re-synced %d cached entries",
            self._keys.channel,
            len(sessions) + len(users) + len(organizations),
        )

    async def _resync_kind(
        self, scope: str, subjects: Sequence[str], key: Callable[[str], str]
    ) -> None:
        for start in range(0, len(subjects), _RESYNC_CHUNK):
            chunk = subjects[start : start + _RESYNC_CHUNK]
            async with asyncio.timeout(self._redis_timeout_s):
                values = await self._redis.mget([key(subject) for subject in chunk])
            for subject, raw in zip(chunk, values, strict=True):
                if scope == "session":
                    decision = None if raw is None else session_decision(raw)
                    self._cache.store_session(subject, decision, trusted=True)
                    continue
                try:
                    value_ms = watermark(raw)
                except MalformedValue as exc:
                    # Left out of the cache, its checks read Redis and meet the failure policy.
                    self._cache.discard(scope, subject)
                    _log.warning("revocation guard: %s %s: %s", scope, subject, exc)
                else:
                    self._cache.store_watermark(scope, subject, value_ms, trusted=True)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error(
            "revocation guard: the subscription task crashed; checks read Redis from now on",
            exc_info=task.exception(),
        )
