"""The Redis denylist that downstream guards read. Its keys are a public contract:

    {prefix}session:{session_id}      JSON {event_id, user_id, organization_id, revoked_at, source}
    {prefix}user:{user_id}            epoch-ms watermark: sessions issued before it are revoked
    {prefix}organization:{org_id}     epoch-ms watermark, likewise for a whole organization

``prefix`` defaults to ``propagator:revoked:``. Every key expires after the maximum session
lifetime, when no session it could deny is still alive.

A batch is applied by one server-side script call: its writes, then, after all of them, one
announcement per applied revocation on the pub/sub channel ``{prefix}events``, so that guards
(``propagator.guard``) update their caches at once; the notice format is in the README's
contract table. A notice says what the batch wrote: guards re-read Redis after a reconnect, so
a lost notice is not a lost revocation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json
from redis.asyncio import Redis

from propagator.errors import map_redis_errors
from propagator.guard import DenylistKeys
from propagator.inventory import MARK_REVOKED_LUA, SessionInventory
from schemas import RevocationEvent, RevocationScope

# One call per batch, run by Redis as a unit. KEYS[i] is the key of op i; ARGV holds the TTL,
# the channel, the ops as one JSON array of [kind, a, b, c] (one argument, however large the
# batch: cheaper to send than four per op), and the notices as a JSON array of strings.
#   session    SET NX EX: the first revocation's record stays when several announce it
#   watermark  raise, never lower: a late or duplicated event must not reopen sessions
#   inventory  mark the user's listed session(s) revoked (a = session id, '' for all)
# The notices are published after every write, so that none overtakes its own write: a
# guard that reads Redis once notified finds the key.
_APPLY_BATCH = (
    MARK_REVOKED_LUA
    + """
local ttl = ARGV[1]
local ops = cjson.decode(ARGV[3])
for i, op in ipairs(ops) do
  local kind, a = op[1], op[2]
  if kind == 'session' then
    redis.call('SET', KEYS[i], a, 'NX', 'EX', ttl)
  elseif kind == 'watermark' then
    local current = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tonumber(a) > current then
      redis.call('SET', KEYS[i], a, 'EX', ttl)
    end
  elseif kind == 'inventory' then
    mark_revoked(KEYS[i], a, op[3], op[4])
  end
end
for _, notice in ipairs(cjson.decode(ARGV[4])) do
  redis.call('PUBLISH', ARGV[2], notice)
end
return #ops
"""
)


def _record(event: RevocationEvent) -> dict[str, str | None]:
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "organization_id": event.organization_id,
        "revoked_at": event.occurred_at.isoformat(),
        "source": event.source,
    }


def session_record(event: RevocationEvent) -> str:
    return to_json(_record(event)).decode()


def _watermark_ms(event: RevocationEvent) -> int:
    return int(event.occurred_at.timestamp() * 1000)


def _subject(event: RevocationEvent) -> str:
    subject = {
        RevocationScope.SESSION: event.session_id,
        RevocationScope.USER: event.user_id,
        RevocationScope.ORGANIZATION: event.organization_id,
    }[event.scope]
    assert subject is not None  # the event model requires the scope's subject
    return subject


def notice(event: RevocationEvent, record: str | None = None) -> str:
    """The pub/sub announcement of one applied revocation (``record``: the session record's
    JSON, when the caller already made it)."""
    body: dict[str, object] = {
        "version": 1,
        "scope": event.scope.value,
        "subject": _subject(event),
        "event_id": event.event_id,
    }
    if event.scope is not RevocationScope.SESSION:
        body["watermark_ms"] = _watermark_ms(event)
        return to_json(body).decode()
    head = to_json(body).decode()
    return f'{head[:-1]},"record":{record or session_record(event)}}}'


class RedisDenylistSink:
    """Writes revocations to the denylist in one pipelined round trip per batch."""

    kind = "redis-denylist"

    def __init__(
        self,
        *,
        redis: Redis,
        key_prefix: str,
        ttl_s: int,
        inventory: SessionInventory | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._redis = redis
        self._inventory = inventory
        self._prefix = key_prefix
        self._ttl_s = ttl_s
        self._apply_batch = redis.register_script(_APPLY_BATCH)
        self._channel = DenylistKeys(key_prefix).channel

    @property
    def channel(self) -> str:
        """The pub/sub channel on which applied revocations are announced."""
        return self._channel

    def session_key(self, session_id: str) -> str:
        return f"{self._prefix}session:{session_id}"

    def watermark_key(self, scope: RevocationScope, subject: str) -> str:
        return f"{self._prefix}{scope.value}:{subject}"

    async def apply(self, events: Sequence[RevocationEvent]) -> None:
        if not events:
            return
        with map_redis_errors():
            expanded = await self._inventoried_sessions(events)
            keys: list[str] = []
            ops: list[tuple[str, str, str, str]] = []
            notices: list[str] = []
            for event in events:
                record = session_record(event)
                notices.append(notice(event, record))
                # "Sign out everywhere" also denies each known session by its own key.
                for session_id in expanded.get(event.event_id, ()):
                    keys.append(self.session_key(session_id))
                    ops.append(("session", record, "", ""))
                if self._inventory is not None and event.user_id:
                    keys.append(self._inventory.key(event.user_id))
                    named = event.session_id if event.scope is RevocationScope.SESSION else None
                    ops.append(
                        ("inventory", named or "", event.occurred_at.isoformat(), event.event_id)
                    )
                if event.scope is RevocationScope.SESSION:
                    assert event.session_id is not None
                    keys.append(self.session_key(event.session_id))
                    ops.append(("session", record, "", ""))
                else:
                    keys.append(self.watermark_key(event.scope, _subject(event)))
                    ops.append(("watermark", str(_watermark_ms(event)), "", ""))
            await self._apply_batch(
                keys=keys, args=[self._ttl_s, self._channel, to_json(ops), to_json(notices)]
            )

    async def _inventoried_sessions(
        self, events: Sequence[RevocationEvent]
    ) -> dict[str, list[str]]:
        if self._inventory is None:
            return {}
        found: dict[str, list[str]] = {}
        for event in events:
            if event.scope is RevocationScope.USER and event.user_id:
                found[event.event_id] = await self._inventory.session_ids(event.user_id)
        return found


class RedisDenylistConfig(BaseModel):
    """A ``redis-denylist`` subscriber (``redis.url``; keys under ``key_prefix``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["redis-denylist"]
    url: str | None = None
    key_prefix: str = "propagator:revoked:"
    max_session_lifetime_s: int = Field(default=30 * 24 * 3600, ge=60)
    # The session inventory to expand user-scope revocations with (None: watermark only).
    inventory_prefix: str | None = "propagator:sessions:"


def build(config: RedisDenylistConfig, *, redis: Redis) -> RedisDenylistSink:
    inventory = (
        SessionInventory(
            redis=redis, prefix=config.inventory_prefix, ttl_s=config.max_session_lifetime_s
        )
        if config.inventory_prefix is not None
        else None
    )
    return RedisDenylistSink(
        redis=redis,
        key_prefix=config.key_prefix,
        ttl_s=config.max_session_lifetime_s,
        inventory=inventory,
    )
