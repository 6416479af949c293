"""Redis clients, built once at the edge from settings and handed to the parts that use them."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from propagator.settings import RedisSettings


def make_redis(settings: RedisSettings, url: str | None = None) -> Redis:
    """A client whose commands wait for a free connection (up to the socket timeout) rather
    than fail when ``max_connections`` are busy, as redis-py's default pool would."""
    pool = BlockingConnectionPool.from_url(
        url or settings.url,
        max_connections=settings.max_connections,
        timeout=settings.socket_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
