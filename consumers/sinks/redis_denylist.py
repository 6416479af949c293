"""The Redis denylist that downstream guards read. Its keys are a public contract:

    {prefix}session:{session_id}      JSON {event_id, user_id, organization_id, revoked_at, source}
    {prefix}user:{user_id}            epoch-ms watermark: sessions issued before it are revoked
    {prefix}organization:{org_id}     epoch-ms watermark, likewise for a whole organization

``prefix`` defaults to ``propagator:revoked:``. Every key expires after the maximum session
lifetime, when no session it could deny is still alive.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from redis.asyncio import Redis

from propagator.errors import map_redis_errors
from schemas import RevocationEvent, RevocationScope

# Raise a watermark, never lower it: a late or duplicated event must not reopen sessions.
_RAISE_WATERMARK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local candidate = tonumber(ARGV[1])
if candidate > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


def session_record(event: RevocationEvent) -> str:
    return json.dumps(
        {
            "event_id": event.event_id,
            "user_id": event.user_id,
            "organization_id": event.organization_id,
            "revoked_at": event.occurred_at.isoformat(),
            "source": event.source,
        },
        separators=(",", ":"),
    )


class RedisDenylistSink:
    """Writes revocations to the denylist in one pipelined round trip per batch."""

    kind = "redis-denylist"

    def __init__(self, *, redis: Redis, key_prefix: str, ttl_s: int) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._redis = redis
        self._prefix = key_prefix
        self._ttl_s = ttl_s
        self._raise_watermark = redis.register_script(_RAISE_WATERMARK)

    def session_key(self, session_id: str) -> str:
        return f"{self._prefix}session:{session_id}"

    def watermark_key(self, scope: RevocationScope, subject: str) -> str:
        return f"{self._prefix}{scope.value}:{subject}"

    async def apply(self, events: Sequence[RevocationEvent]) -> None:
        if not events:
            return
        with map_redis_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for event in events:
                    if event.scope is RevocationScope.SESSION:
                        assert event.session_id is not None
                        # NX keeps the first revocation's record when several announce it.
                        pipe.set(
                            self.session_key(event.session_id),
                            session_record(event),
                            nx=True,
                            ex=self._ttl_s,
                        )
                    else:
                        subject = (
                            event.user_id
                            if event.scope is RevocationScope.USER
                            else event.organization_id
                        )
                        assert subject is not None
                        watermark_ms = int(event.occurred_at.timestamp() * 1000)
                        await self._raise_watermark(
                            keys=[self.watermark_key(event.scope, subject)],
                            args=[watermark_ms, self._ttl_s],
                            client=pipe,
                        )
                await pipe.execute()
