"""Per-subscriber stats that worker processes publish to Redis, for the live dashboard.

A worker's Prometheus registry answers only on that worker's own port; the dashboard is served
by ingest. So each worker process writes a compact snapshot of its registry, per subscriber,
to one Redis hash every few seconds, and ingest merges the snapshots of every process:

    {stats_key}   hash: "{subscriber}@{process}" → JSON snapshot (see ``subscriber_snapshots``)

Counters, record lag and histogram buckets add up across the processes that share a
subscriber; lag in seconds, dead-letter depth and circuit state take the worst.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from propagator.errors import map_redis_errors

# Metric family (without the propagator_ prefix) → snapshot field, for plain values.
_VALUES = {
    "applied": "applied",
    "dead_letters": "dead_letters",
    "dead_letter_depth": "dead_letter_depth",
    "circuit_open": "circuit_open",
    "consumer_lag_records": "lag_records",
    "consumer_lag_seconds": "lag_seconds",
}
_HISTOGRAMS = {"propagation_seconds": "propagation_seconds", "sink_seconds": "sink_seconds"}
# How snapshots of one subscriber from several processes combine.
_WORST = {"lag_seconds", "dead_letter_depth", "circuit_open"}


def _empty(subscriber: str) -> dict[str, Any]:
    return {
        "subscriber": subscriber,
        **{field: 0.0 for field in _VALUES.values()},
        "retries": {},
        **{field: {"buckets": [], "count": 0.0, "sum": 0.0} for field in _HISTOGRAMS.values()},
    }


def subscriber_snapshots(
    registry: CollectorRegistry, subscribers: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """The worker metrics of each subscriber, as plain JSON-ready values."""
    snapshots = {name: _empty(name) for name in subscribers}
    for family in registry.collect():
        short = family.name.removeprefix("propagator_")
        for sample in family.samples:
            snapshot = snapshots.get(sample.labels.get("subscriber", ""))
            if snapshot is None or sample.name.endswith("_created"):
                continue
            if short in _VALUES:
                snapshot[_VALUES[short]] = sample.value
            elif short == "retries":
                snapshot["retries"][sample.labels["level"]] = sample.value
            elif short in _HISTOGRAMS:
                histogram = snapshot[_HISTOGRAMS[short]]
                if sample.name.endswith("_bucket"):
                    histogram["buckets"].append([float(sample.labels["le"]), sample.value])
                elif sample.name.endswith("_count"):
                    histogram["count"] = sample.value
                elif sample.name.endswith("_sum"):
                    histogram["sum"] = sample.value
    return snapshots


def merge(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One subscriber's snapshots from several processes, combined."""
    merged = _empty(str(snapshots[0]["subscriber"]))
    merged["processes"] = len(snapshots)
    merged["at"] = max(float(s.get("at", 0)) for s in snapshots)
    for snapshot in snapshots:
        for field in _VALUES.values():
            value = float(snapshot.get(field, 0))
            merged[field] = max(merged[field], value) if field in _WORST else merged[field] + value
        for level, count in snapshot.get("retries", {}).items():
            merged["retries"][level] = merged["retries"].get(level, 0) + count
        for field in _HISTOGRAMS.values():
            source, target = snapshot.get(field) or {}, merged[field]
            target["count"] += source.get("count", 0)
            target["sum"] += source.get("sum", 0)
            buckets = {le: count for le, count in target["buckets"]}
            for le, count in source.get("buckets", []):
                buckets[le] = buckets.get(le, 0) + count
            target["buckets"] = sorted([le, count] for le, count in buckets.items())
    return merged


def histogram_quantile(q: float, buckets: Sequence[Sequence[float]]) -> float | None:
    """Prometheus's histogram_quantile over cumulative ``[upper bound, count]`` buckets."""
    ordered = sorted((float(le), float(count)) for le, count in buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                # Beyond the last finite bound: the best answer is that bound.
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


class StatsBoard:
    """The Redis hash where workers publish their subscriber snapshots and ingest reads them."""

    def __init__(self, *, redis: Redis, key: str, ttl_s: float) -> None:
        self._redis = redis
        self._key = key
        self._ttl_s = max(int(ttl_s), 1)
        # Unique per run, even for several workers in one process (as the tests run them).
        self._process = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    async def publish(self, snapshots: Mapping[str, Mapping[str, Any]]) -> None:
        now = time.time()
        fields = {
            f"{name}@{self._process}": json.dumps({**snapshot, "at": now})
            for name, snapshot in snapshots.items()
        }
        if not fields:
            return
        with map_redis_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(self._key, mapping=fields)  # type: ignore[arg-type]
                pipe.expire(self._key, self._ttl_s)
                await pipe.execute()

    async def withdraw(self, subscribers: Iterable[str]) -> None:
        """Remove this process's snapshots (on shutdown), so they do not linger as stale."""
        fields = [f"{name}@{self._process}" for name in subscribers]
        if fields:
            with map_redis_errors():
                await self._redis.hdel(self._key, *fields)

    async def read(self, *, max_age_s: float) -> dict[str, dict[str, Any]]:
        """Per subscriber, the merged snapshots of the processes heard from recently."""
        with map_redis_errors():
            raw = await self._redis.hgetall(self._key)
        oldest = time.time() - max_age_s
        by_subscriber: dict[str, list[dict[str, Any]]] = {}
        for value in raw.values():
            snapshot = json.loads(value)
            if float(snapshot.get("at", 0)) >= oldest:
                by_subscriber.setdefault(snapshot["subscriber"], []).append(snapshot)
        return {name: merge(found) for name, found in sorted(by_subscriber.items())}
