"""Publish each event id once per source, however often or concurrently it is delivered.

Identity providers redeliver (WorkOS up to 12 times, Svix for days) and attackers replay.
Within one process, concurrent copies of a delivery share one publish. Across processes a
claim in Redis (``SET NX``) marks the id ``pending`` while it is published and ``done`` for
``ttl_s`` after the broker acknowledged. When Redis cannot be reached the event is published
anyway — downstream sinks are idempotent — and the degradation is counted.

The claims and "done" marks of the requests that arrive in the same turn of the event loop
travel together, one script call per batch: under load a request costs a fraction of a Redis
round trip instead of two.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Literal, Protocol, TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from propagator.errors import BrokerUnavailable
from propagator.publisher import Publisher
from schemas import RevocationEvent

_log = structlog.get_logger(__name__)

_DONE = b"done"
# How long the "done" marks (and the receipts' "published" notes) of published events gather.
DONE_WINDOW_S = 0.005

Published = Literal["published", "duplicate"]

_T = TypeVar("_T")
_R = TypeVar("_R")


class ClaimStore(Protocol):
    """Where claims live: Redis in production (``RedisClaims``)."""

    async def claim(self, keys: Sequence[str], ttl_s: int) -> list[bool]:
        """``SET key pending NX EX ttl_s`` for each key: whether each was claimed."""

    async def mark_done(self, keys: Sequence[str], ttl_s: int) -> None:
        """``SET key done EX ttl_s`` for each key."""

    async def state(self, key: str) -> bytes | None: ...

    async def release(self, key: str) -> None: ...


# KEYS: the claims. ARGV[1]: the TTL. Returns 1 for each key claimed, 0 for each already held.
_CLAIM = """
local claimed = {}
for i, key in ipairs(KEYS) do
  claimed[i] = redis.call('SET', key, 'pending', 'NX', 'EX', ARGV[1]) and 1 or 0
end
return claimed
"""

# KEYS: the claims. ARGV[1]: the TTL.
_MARK_DONE = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, 'done', 'EX', ARGV[1])
end
return #KEYS
"""


class RedisClaims:
    """Claims in Redis, each batch in one script call."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._mark_done = redis.register_script(_MARK_DONE)

    async def claim(self, keys: Sequence[str], ttl_s: int) -> list[bool]:
        return [bool(c) for c in await self._claim(keys=list(keys), args=[ttl_s])]

    async def mark_done(self, keys: Sequence[str], ttl_s: int) -> None:
        await self._mark_done(keys=list(keys), args=[ttl_s])

    async def state(self, key: str) -> bytes | None:
        value = await self._redis.get(key)
        return value if value is None or isinstance(value, bytes) else value.encode()

    async def release(self, key: str) -> None:
        await self._redis.delete(key)


class _Batcher(Generic[_T, _R]):
    """Runs the items submitted within one turn of the event loop as one batch; with a
    ``window_s``, the items submitted within that time of the first."""

    def __init__(
        self, run: Callable[[list[_T]], Awaitable[Sequence[_R]]], *, window_s: float = 0.0
    ) -> None:
        self._run = run
        self._window_s = window_s
        self._queued: list[tuple[_T, asyncio.Future[_R]]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def submit(self, item: _T) -> asyncio.Future[_R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_R] = loop.create_future()
        if not self._queued:
            if self._window_s > 0:
                self._timer = loop.call_later(self._window_s, self._start)
            else:
                loop.call_soon(self._start)
        self._queued.append((item, future))
        return future

    async def settle(self) -> None:
        """Run what is queued now, and wait for every batch in flight."""
        while self._queued or self._running:
            self._start()
            await asyncio.gather(*self._running, return_exceptions=True)

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._queued:
            return  # already started by settle()
        batch, self._queued = self._queued, []
        task = asyncio.create_task(self._deliver(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _deliver(self, batch: list[tuple[_T, asyncio.Future[_R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every caller gets the batch's failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


class PublishOnce:
    """Wraps a publisher so that a duplicate delivery is answered without a second record."""

    def __init__(
        self,
        *,
        publisher: Publisher,
        claims: ClaimStore | None,
        key_prefix: str = "propagator:dedupe:",
        ttl_s: int = 24 * 3600,
        claim_ttl_s: int = 30,
        wait_for_other_s: float = 4.0,
        on_degraded: Callable[[], None] = lambda: None,
        also_on_publish: Callable[[Sequence[RevocationEvent]], Awaitable[None]] | None = None,
        done_window_s: float = DONE_WINDOW_S,
    ) -> None:
        if ttl_s <= 0 or claim_ttl_s <= 0:
            raise ValueError("TTLs must be positive")
        self._publisher = publisher
        self._claims = claims
        self._prefix = key_prefix
        self._ttl_s = ttl_s
        self._claim_ttl_s = claim_ttl_s
        self._wait_for_other_s = wait_for_other_s
        self._on_degraded = on_degraded
        # Further writes for published events, made with their batch's "done" marks.
        self._also_on_publish = also_on_publish
        self._inflight: dict[str, asyncio.Task[Published]] = {}
        self._claiming = _Batcher[str, bool](self._claim_batch)
        # Nobody waits for a "done" mark (see _publish_claimed): gathering a few milliseconds
        # of them makes one script call carry several requests' marks at moderate rates too.
        self._finishing = _Batcher[tuple[str, RevocationEvent], None](
            self._done_batch, window_s=done_window_s
        )

    async def publish(self, event: RevocationEvent) -> Published:
        key = f"{self._prefix}{event.source}:{event.event_id}"
        running = self._inflight.get(key)
        if running is not None:
            # A concurrent copy is being published: share its outcome, success or failure.
            await asyncio.shield(running)
            return "duplicate"
        task = asyncio.create_task(self._publish_claimed(key, event))
        self._inflight[key] = task
        task.add_done_callback(lambda _: self._inflight.pop(key, None))
        # Shielded, so a client hanging up cannot abandon a publish half-way.
        return await asyncio.shield(task)

    async def _publish_claimed(self, key: str, event: RevocationEvent) -> Published:
        if self._claims is None:
            await self._publisher.publish(event)
            return "published"
        try:
            claimed = await self._claiming.submit(key)
        except RedisError as exc:
            self._degraded(exc)
            await self._publisher.publish(event)
            return "published"
        if not claimed:
            return await self._wait_for_other(key)
        try:
            await self._publisher.publish(event)
        except BaseException:
            # Free the claim so the provider's retry is published instead of refused.
            await self._quietly(self._claims.release(key))
            raise
        # The answer need not wait for the "done" mark: the event is durable already. Should
        # the mark be lost, the claim expires and a later redelivery is published again, which
        # the idempotent sinks absorb; a redelivery meanwhile waits for the mark.
        self._finishing.submit((key, event)).add_done_callback(self._count_failure)
        return "published"

    def _count_failure(self, done: asyncio.Future[None]) -> None:
        error = None if done.cancelled() else done.exception()
        if isinstance(error, RedisError):
            self._degraded(error)
        elif error is not None:
            _log.warning("dedupe.mark_failed", error=f"{type(error).__name__}: {error}")

    async def settle(self) -> None:
        """Wait until every "done" mark submitted so far is written (or failed): at shutdown,
        and for tests."""
        await self._finishing.settle()

    async def _claim_batch(self, keys: list[str]) -> list[bool]:
        assert self._claims is not None
        return await self._claims.claim(keys, self._claim_ttl_s)

    async def _done_batch(self, items: list[tuple[str, RevocationEvent]]) -> list[None]:
        assert self._claims is not None
        done = self._claims.mark_done([key for key, _ in items], self._ttl_s)
        if self._also_on_publish is None:
            await done
        else:
            await asyncio.gather(done, self._also_on_publish([event for _, event in items]))
        return [None] * len(items)

    async def _wait_for_other(self, key: str) -> Published:
        assert self._claims is not None
        deadline = time.monotonic() + self._wait_for_other_s
        while True:
            try:
                state = await self._claims.state(key)
            except RedisError as exc:
                self._degraded(exc)
                break
            if state == _DONE:
                return "duplicate"
            if state is None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        # The other publish failed or is slow: let the provider retry rather than guess.
        raise BrokerUnavailable("the same event is being published by another request")

    async def _quietly(self, operation: Awaitable[object]) -> None:
        try:
            await operation
        except RedisError as exc:
            self._degraded(exc)

    def _degraded(self, exc: RedisError) -> None:
        self._on_degraded()
        _log.warning("dedupe.degraded", error=f"{type(exc).__name__}: {exc}")
