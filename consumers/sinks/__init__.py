"""Sinks apply revocations to one downstream. Every sink is idempotent: applying twice is safe.

Every sink kind is one module with the same shape: a ``*Config`` model (with ``kind``), the
sink class with ``apply(events)``, and ``build(config, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from redis.asyncio import Redis

from consumers.sinks import http, redis_denylist, redis_session_store
from consumers.sinks._base import Sink
from consumers.sinks.http import HttpSink, HttpSinkConfig
from consumers.sinks.redis_denylist import RedisDenylistConfig, RedisDenylistSink
from consumers.sinks.redis_session_store import RedisSessionStoreConfig, RedisSessionStoreSink


def build_sink(
    config: RedisDenylistConfig | RedisSessionStoreConfig | HttpSinkConfig,
    *,
    redis: Callable[[str | None], Redis],
    session: aiohttp.ClientSession,
) -> Sink:
    """The sink a subscriber's config describes, on the worker's shared clients."""
    match config:
        case RedisDenylistConfig():
            return redis_denylist.build(config, redis=redis(config.url))
        case RedisSessionStoreConfig():
            return redis_session_store.build(config, redis=redis(config.url))
        case HttpSinkConfig():
            return http.build(config, http=session)


__all__ = [
    "HttpSink",
    "HttpSinkConfig",
    "RedisDenylistConfig",
    "RedisDenylistSink",
    "RedisSessionStoreConfig",
    "RedisSessionStoreSink",
    "Sink",
    "build_sink",
]
