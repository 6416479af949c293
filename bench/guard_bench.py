"""Part 4: the cost of a ``RevocationGuard.check``, beside a dict lookup and a Redis GET.

    python -m bench.guard_bench --redis-url URL --prefix P --duration S --out FILE

One process, one event loop, as an application would run the guard:

* cache hits: 2,000 sessions (1,000 users, one organization), each checked once so the
  guard caches "not revoked", then checked again and again. The loop yields to the event
  loop every 1,000 checks so the guard's subscription keeps its cache trusted; the run is
  refused unless every timed check was a cache hit. Rate per CPU-second (``process_time``)
  is the "per core" figure.
* Redis-miss path: a new session on every check, so every check reads Redis (MGET).
* baselines: a plain ``dict.get`` per check, and a plain ``await redis.get(key)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from propagator.guard import RevocationGuard

_SESSIONS = 2_000
_CHUNK = 1_000


async def _timed(
    duration_s: float, chunk: Callable[[int], Awaitable[int]]
) -> dict[str, float | int]:
    """Run ``chunk`` (which returns how many operations it did) until the time is up."""
    count, chunk_no = 0, 0
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < duration_s:
        count += await chunk(chunk_no)
        chunk_no += 1
        await asyncio.sleep(0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "operations": count,
        "per_s": count / wall,
        "per_cpu_s": count / cpu if cpu > 0 else 0.0,
        "cpu_share": cpu / wall,
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    redis = Redis.from_url(args.redis_url)
    guard = RevocationGuard(redis=redis, key_prefix=args.prefix)
    await guard.start()
    try:
        iat = time.time()
        org = "org_bench"
        pairs = [(f"session_{i}", f"user_{i % 1000}") for i in range(_SESSIONS)]
        for session_id, user_id in pairs:  # each read once: the guard caches "not revoked"
            await guard.check(session_id, user_id, org, issued_at=iat)

        async def hits(n: int) -> int:
            offset = (n * _CHUNK) % _SESSIONS
            for session_id, user_id in pairs[offset : offset + _CHUNK]:
                await guard.check(session_id, user_id, org, issued_at=iat)
            return _CHUNK

        before = (guard.stats.checks, guard.stats.cache_hits)
        cache_hit = _timed(args.duration, hits)
        cache = await cache_hit
        checks = guard.stats.checks - before[0]
        cache["hit_ratio"] = (guard.stats.cache_hits - before[1]) / checks if checks else 0.0

        lookup = dict.fromkeys(session_id for session_id, _ in pairs)

        async def dict_gets(n: int) -> int:
            offset = (n * _CHUNK) % _SESSIONS
            for session_id, _ in pairs[offset : offset + _CHUNK]:
                lookup.get(session_id)
            return _CHUNK

        plain = await _timed(args.duration, dict_gets)

        async def misses(n: int) -> int:
            for i in range(100):
                await guard.check(f"miss_{n}_{i}", f"user_{i}", org, issued_at=iat)
            return 100

        reads = guard.stats.redis_reads
        miss = await _timed(args.duration, misses)
        miss["redis_read_ratio"] = (guard.stats.redis_reads - reads) / miss["operations"]

        async def gets(n: int) -> int:
            for i in range(100):
                await redis.get(f"{args.prefix}session:get_{n}_{i}")
            return 100

        get = await _timed(args.duration, gets)
        return {"cache_hit": cache, "dict_get": plain, "redis_miss": miss, "redis_get": get}
    finally:
        await guard.stop()
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    Path(args.out).write_text(json.dumps(asyncio.run(_main(args))))


if __name__ == "__main__":
    main()
