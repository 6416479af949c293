"""Publish each event id once per source, however often or concurrently it is delivered.

Identity providers redeliver (WorkOS up to 12 times, Svix for days) and attackers replay.
Within one process, concurrent copies of a delivery share one publish. Across processes a
Redis claim (``SET NX``) marks the id ``pending`` while it is published and ``done`` for
``ttl_s`` after the broker acknowledged. When Redis cannot be reached the event is published
anyway — downstream sinks are idempotent — and the degradation is counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from propagator.errors import BrokerUnavailable
from propagator.publisher import Publisher
from schemas import RevocationEvent

_log = structlog.get_logger(__name__)

_PENDING = b"pending"
_DONE = b"done"

Published = Literal["published", "duplicate"]


class PublishOnce:
    """Wraps a publisher so that a duplicate delivery is answered without a second record."""

    def __init__(
        self,
        *,
        publisher: Publisher,
        redis: Redis | None,
        key_prefix: str = "propagator:dedupe:",
        ttl_s: int = 24 * 3600,
        claim_ttl_s: int = 30,
        wait_for_other_s: float = 4.0,
        on_degraded: Callable[[], None] = lambda: None,
        also_on_publish: Callable[[Pipeline, RevocationEvent], None] | None = None,
    ) -> None:
        if ttl_s <= 0 or claim_ttl_s <= 0:
            raise ValueError("TTLs must be positive")
        self._publisher = publisher
        self._redis = redis
        self._prefix = key_prefix
        self._ttl_s = ttl_s
        self._claim_ttl_s = claim_ttl_s
        self._wait_for_other_s = wait_for_other_s
        self._on_degraded = on_degraded
        # Further writes for a published event, sent in the same round trip as "done".
        self._also_on_publish = also_on_publish
        self._inflight: dict[str, asyncio.Task[Published]] = {}

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
        if self._redis is None:
            await self._publisher.publish(event)
            return "published"
        try:
            claimed = await self._redis.set(key, _PENDING, nx=True, ex=self._claim_ttl_s)
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
            await self._quietly(self._redis.delete(key))
            raise
        await self._quietly(self._mark_done(key, event))
        return "published"

    async def _mark_done(self, key: str, event: RevocationEvent) -> None:
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(key, _DONE, ex=self._ttl_s)
            if self._also_on_publish is not None:
                self._also_on_publish(pipe, event)
            await pipe.execute()

    async def _wait_for_other(self, key: str) -> Published:
        assert self._redis is not None
        deadline = time.monotonic() + self._wait_for_other_s
        while True:
            try:
                state = await self._redis.get(key)
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

    async def _quietly(self, operation: object) -> None:
        try:
            await operation  # type: ignore[misc]
        except RedisError as exc:
            self._degraded(exc)

    def _degraded(self, exc: RedisError) -> None:
        self._on_degraded()
        _log.warning("dedupe.degraded", error=f"{type(exc).__name__}: {exc}")
