"""A fake Redis for the guard's unit tests: MGET, PUBLISH, and pub/sub with PING.

It mimics what redis-py's asyncio client returns (bytes, message dicts), and lets a test
take Redis away, drop a subscription, re-subscribe behind the guard's back the way redis-py
does after a reconnect, or stop answering pings.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from propagator.guard import DenylistKeys, RevocationGuard

PREFIX = "unit:revoked:"
KEYS = DenylistKeys(PREFIX)
_BREAK = object()


class FakePubSub:
    def __init__(self, redis: FakeRedis) -> None:
        self._redis = redis
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.channels: set[str] = set()
        self.closed = False
        self.broken = False

    async def subscribe(self, channel: str) -> None:
        if self._redis.unavailable is not None:
            raise self._redis.unavailable
        if self._redis.refuse_subscriptions:
            raise RedisConnectionError("subscription refused")
        self.channels.add(channel)
        self.confirm_subscription(channel)

    def confirm_subscription(self, channel: str) -> None:
        self._queue.put_nowait(
            {"type": "subscribe", "pattern": None, "channel": channel.encode(), "data": 1}
        )

    async def ping(self, token: str) -> None:
        if self.broken:
            raise RedisConnectionError("connection lost")
        if self._redis.answer_pings:
            self._queue.put_nowait(
                {"type": "pong", "pattern": None, "channel": None, "data": token.encode()}
            )

    async def get_message(self, timeout: float | None = 0.0) -> dict[str, Any] | None:
        if self.broken:
            raise RedisConnectionError("connection lost")
        if self._queue.empty():
            try:
                async with asyncio.timeout(timeout):
                    item = await self._queue.get()
            except TimeoutError:
                return None
        else:
            item = self._queue.get_nowait()
        if item is _BREAK:
            raise RedisConnectionError("connection lost")
        message: dict[str, Any] = item
        return message

    def deliver(self, channel: str, data: bytes) -> None:
        if channel in self.channels and not self.closed and not self.broken:
            self._queue.put_nowait(
                {"type": "message", "pattern": None, "channel": channel.encode(), "data": data}
            )

    def break_connection(self) -> None:
        self.broken = True
        self._queue.put_nowait(_BREAK)

    async def aclose(self) -> None:
        self.closed = True


class FakeRedis:
    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}
        self.reads: list[list[str]] = []
        self.unavailable: Exception | None = None
        self.hang: asyncio.Event | None = None
        self.answer_pings = True
        self.refuse_subscriptions = False
        self.pubsubs: list[FakePubSub] = []
        self.closed = False

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        self.reads.append(list(keys))
        if self.unavailable is not None:
            raise self.unavailable
        if self.hang is not None:
            await self.hang.wait()
        return [self.store.get(key) for key in keys]

    def pubsub(self) -> FakePubSub:
        pubsub = FakePubSub(self)
        self.pubsubs.append(pubsub)
        return pubsub

    async def publish(self, channel: str, data: str | bytes) -> int:
        raw = data.encode() if isinstance(data, str) else data
        live = [p for p in self.pubsubs if channel in p.channels and not p.closed]
        for pubsub in live:
            pubsub.deliver(channel, raw)
        return len(live)

    async def aclose(self) -> None:
        self.closed = True

    @property
    def current(self) -> FakePubSub:
        return self.pubsubs[-1]

    # The sink's writes, in the contract's shape.

    def revoke_session(self, session_id: str, event_id: str = "event_1") -> dict[str, Any]:
        record = {
            "event_id": event_id,
            "user_id": "user_1",
            "organization_id": None,
            "revoked_at": "2026-12-01T12:00:00+00:00",
            "source": "workos",
        }
        self.store[KEYS.session(session_id)] = json.dumps(record).encode()
        return record

    def raise_watermark(self, scope: str, subject: str, watermark_ms: int) -> None:
        key = KEYS.user(subject) if scope == "user" else KEYS.organization(subject)
        self.store[key] = str(watermark_ms).encode()

    async def announce_session(self, session_id: str) -> None:
        record = self.revoke_session(session_id)
        notice = {"version": 1, "scope": "session", "subject": session_id, "record": record}
        await self.publish(KEYS.channel, json.dumps(notice))

    async def announce_watermark(
        self, scope: str, subject: str, watermark_ms: int, *, write: bool = True
    ) -> None:
        if write:
            self.raise_watermark(scope, subject, watermark_ms)
        notice = {"version": 1, "scope": scope, "subject": subject, "watermark_ms": watermark_ms}
        await self.publish(KEYS.channel, json.dumps(notice))


def make_guard(redis: FakeRedis, **options: Any) -> RevocationGuard:
    options.setdefault("key_prefix", PREFIX)
    options.setdefault("connect_timeout_s", 2.0)
    return RevocationGuard(redis=redis, **options)  # type: ignore[arg-type]


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """A JWT-shaped token with the given claims; its signature is not a real one."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


async def wait_for(condition: Callable[[], Any | Awaitable[Any]], *, timeout: float = 5.0) -> Any:
    """Wait until ``condition`` holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.005)
