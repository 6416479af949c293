"""Token-bucket rate limits per source and per client address, in process."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from propagator.errors import RateLimited


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class TokenBuckets:
    """One bucket per key, at most ``max_keys`` of them (least recently used go first)."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> float:
        """Take one token; return 0, or the seconds until one is available (nothing taken)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self._burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self._rate


class RateLimiter:
    """Refuses a delivery with 429 when its source or its client exceeds the configured rate."""

    def __init__(
        self,
        *,
        per_source: TokenBuckets | None,
        per_client: TokenBuckets | None,
    ) -> None:
        self._per_source = per_source
        self._per_client = per_client

    def check(self, source: str, client: str) -> None:
        for buckets, key, what in (
            (self._per_client, f"{source}\x00{client}", "this client"),
            (self._per_source, source, "this source"),
        ):
            if buckets is None:
                continue
            wait = buckets.take(key)
            if wait > 0:
                raise RateLimited(
                    f"too many requests from {what}", retry_after_s=max(1, math.ceil(wait))
                )
