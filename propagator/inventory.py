"""The session inventory: per user, the sessions an identity provider announced, in Redis.

    {prefix}user:{user_id}   hash: session_id → JSON {session_id, user_id, organization_id,
                             ip_address, user_agent, device, created_at, last_seen_at, status
                             ("active" | "revoked"), revoked_at, revoked_by_event, source}

Ingest records ``session.created`` (WorkOS, Clerk); the ``redis-denylist`` sink marks sessions
revoked and, for a user-scope revocation ("sign out everywhere"), expands it into a denylist
key for every session listed here, beside the watermark. Each hash expires after the
maximum session lifetime from its last write.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from redis.asyncio import Redis

from propagator.sources import SessionSeen

DEFAULT_PREFIX = "propagator:sessions:"

# Merge an observation into the stored record: keep the first created_at and a revoked status.
_SEEN = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
local incoming = cjson.decode(ARGV[2])
if current then
  local stored = cjson.decode(current)
  incoming['created_at'] = stored['created_at'] or incoming['created_at']
  if stored['status'] == 'revoked' then
    incoming['status'] = 'revoked'
    incoming['revoked_at'] = stored['revoked_at']
    incoming['revoked_by_event'] = stored['revoked_by_event']
  end
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(incoming))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# Lua: mark sessions revoked in one user's hash (one named, or every one when ``session`` is
# empty); the first revocation's time and event are kept. Shared with the denylist sink's
# batch script, which marks the inventory in the same call as its denylist writes.
MARK_REVOKED_LUA = """
local function mark_revoked(key, session, revoked_at, event_id)
  local function mark(field, raw)
    local record = cjson.decode(raw)
    if record['status'] ~= 'revoked' then
      record['status'] = 'revoked'
      record['revoked_at'] = revoked_at
      record['revoked_by_event'] = event_id
      redis.call('HSET', key, field, cjson.encode(record))
    end
  end
  if session ~= '' then
    local raw = redis.call('HGET', key, session)
    if raw then mark(session, raw) end
  else
    local all = redis.call('HGETALL', key)
    for i = 1, #all, 2 do mark(all[i], all[i + 1]) end
  end
end
"""


class SessionInventory:
    def __init__(self, *, redis: Redis, prefix: str = DEFAULT_PREFIX, ttl_s: int) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._redis = redis
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._seen = redis.register_script(_SEEN)

    def key(self, user_id: str) -> str:
        return f"{self._prefix}user:{user_id}"

    async def seen(self, session: SessionSeen, seen_at: str) -> None:
        record = {
            **{k: v for k, v in asdict(session).items() if k not in ("event_id", "type")},
            "last_seen_at": seen_at,
            "status": "active",
            "revoked_at": None,
            "revoked_by_event": None,
        }
        await self._seen(
            keys=[self.key(session.user_id)],
            args=[session.session_id, json.dumps(record), self._ttl_s],
        )

    async def sessions(self, user_id: str) -> list[dict[str, Any]]:
        raw = await self._redis.hvals(self.key(user_id))
        records = [json.loads(value) for value in raw]
        return sorted(records, key=lambda r: str(r.get("created_at") or ""))

    async def session_ids(self, user_id: str) -> list[str]:
        fields = await self._redis.hkeys(self.key(user_id))
        return [f.decode() if isinstance(f, bytes) else str(f) for f in fields]
