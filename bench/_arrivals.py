"""When each revoked session's denylist key appears in Redis, per subscriber.

The ``redis-denylist`` sink announces every applied revocation on the pub/sub channel
``{key_prefix}events``, in the same pipeline and after the batch's writes, so a notice
arrives only once its key exists: the watcher timestamps notices as they arrive. If the
sink in this checkout does not announce (no notice for a key that exists), the watcher
falls back to polling the keys with pipelined EXISTS every millisecond or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Iterable, Sequence

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

_POLL_INTERVAL_S = 0.001
_POLL_CHUNK = 2000


class Arrivals:
    """Arrival instants (``time.monotonic()``) of session keys under several key prefixes."""

    def __init__(self, *, redis: Redis, prefixes: Sequence[str]) -> None:
        self._redis = redis
        self._prefixes = list(prefixes)
        self._channels = {f"{prefix}events": prefix for prefix in prefixes}
        self.seen: dict[str, dict[str, float]] = {prefix: {} for prefix in prefixes}
        # Per prefix, the expected sessions not seen yet: what the poll fallback asks about.
        self._outstanding: dict[str, set[str]] = {prefix: set() for prefix in prefixes}
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self.mode = "notice"

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(*self._channels)
        self._task = asyncio.create_task(self._listen(), name="arrivals")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    def expect(self, session_ids: Iterable[str]) -> None:
        ids = list(session_ids)
        for prefix in self._prefixes:
            self._outstanding[prefix].update(s for s in ids if s not in self.seen[prefix])

    def _arrived(self, prefix: str, session_id: str, now: float) -> None:
        self.seen[prefix].setdefault(session_id, now)
        self._outstanding[prefix].discard(session_id)

    async def _listen(self) -> None:
        assert self._pubsub is not None
        async for message in self._pubsub.listen():
            if message["type"] != "message":
                continue
            now = time.monotonic()
            channel = message["channel"]
            prefix = self._channels[channel.decode() if isinstance(channel, bytes) else channel]
            subject = json.loads(message["data"]).get("subject")
            if isinstance(subject, str):
                self._arrived(prefix, subject, now)

    async def _poll(self) -> None:
        while True:
            for prefix in self._prefixes:
                missing = list(itertools.islice(self._outstanding[prefix], _POLL_CHUNK))
                if not missing:
                    continue
                async with self._redis.pipeline(transaction=False) as pipe:
                    for session_id in missing:
                        pipe.exists(f"{prefix}session:{session_id}")
                    found = await pipe.execute()
                now = time.monotonic()
                for session_id, exists in zip(missing, found, strict=True):
                    if exists:
                        self._arrived(prefix, session_id, now)
            await asyncio.sleep(_POLL_INTERVAL_S)

    def arrived_everywhere(self, session_ids: Iterable[str]) -> int:
        return sum(1 for s in session_ids if all(s in self.seen[p] for p in self._prefixes))

    def last_arrival(self, session_id: str) -> float | None:
        """When the key existed under every prefix (every subscriber applied it)."""
        instants = [self.seen[p].get(session_id) for p in self._prefixes]
        if any(t is None for t in instants):
            return None
        return max(t for t in instants if t is not None)

    async def wait_all(self, session_ids: Sequence[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.arrived_everywhere(session_ids) < len(session_ids):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def keys_exist(self, session_ids: Sequence[str]) -> bool:
        async with self._redis.pipeline(transaction=False) as pipe:
            for prefix in self._prefixes:
                for session_id in session_ids:
                    pipe.exists(f"{prefix}session:{session_id}")
            return all(await pipe.execute())

    async def settle_mode(self, session_ids: Sequence[str], timeout_s: float) -> None:
        """Watch the warm-up events: keep notices if they come, else poll the keys."""
        if await self.wait_all(session_ids, timeout_s):
            return
        if await self.keys_exist(session_ids):
            self.mode = "poll"
            task = asyncio.create_task(self._poll(), name="arrivals-poll")
            if self._task is not None:
                self._task.cancel()
            self._task = task
            return
        raise RuntimeError(f"warm-up events did not reach Redis within {timeout_s}s")
