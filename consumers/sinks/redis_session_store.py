"""The ``redis-session-store`` sink: deletes an application's own session records.

Works with stores that keep one key per session (connect-redis ``sess:{session_id}``,
Django's cache sessions, Spring Session ``spring:session:sessions:{session_id}``). For
user scope it reads an index set the application maintains (e.g. ``user-sessions:{user_id}``)
listing that user's session keys, and deletes them all with the index, atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, model_validator
from redis.asyncio import Redis

from propagator.errors import map_redis_errors
from schemas import RevocationEvent, RevocationScope

KIND = "redis-session-store"

# Every member of the index is a session key; delete them and the index in one step.
_END_USER_SESSIONS = """
local keys = redis.call('SMEMBERS', KEYS[1])
local deleted = 0
for _, key in ipairs(keys) do
  deleted = deleted + redis.call('DEL', key)
end
redis.call('DEL', KEYS[1])
return deleted
"""


class RedisSessionStoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["redis-session-store"]
    # The application's Redis, when it is not the one in `redis.url`.
    url: str | None = None
    session_key: str = "sess:{session_id}"
    user_index_key: str | None = "user-sessions:{user_id}"

    @model_validator(mode="after")
    def _templates(self) -> Self:
        try:
            self.session_key.format(session_id="x")
            if self.user_index_key is not None:
                self.user_index_key.format(user_id="x")
        except (KeyError, IndexError) as exc:
            raise ValueError("templates may use only {session_id} and {user_id}") from exc
        return self


class RedisSessionStoreSink:
    """Deletes session records; deleting what is already gone is a no-op, so it is idempotent."""

    kind = KIND

    def __init__(self, *, redis: Redis, session_key: str, user_index_key: str | None) -> None:
        self._redis = redis
        self._session_key = session_key
        self._user_index_key = user_index_key
        self._end_user_sessions = redis.register_script(_END_USER_SESSIONS)

    async def apply(self, events: Sequence[RevocationEvent]) -> None:
        with map_redis_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for event in events:
                    if event.scope is RevocationScope.SESSION and event.session_id:
                        pipe.delete(self._session_key.format(session_id=event.session_id))
                    elif (
                        event.scope is RevocationScope.USER
                        and event.user_id
                        and self._user_index_key is not None
                    ):
                        index = self._user_index_key.format(user_id=event.user_id)
                        await self._end_user_sessions(keys=[index], client=pipe)
                    # Organization scope has no index to expand: the denylist's watermark covers it.
                await pipe.execute()


def build(config: RedisSessionStoreConfig, *, redis: Redis) -> RedisSessionStoreSink:
    return RedisSessionStoreSink(
        redis=redis, session_key=config.session_key, user_index_key=config.user_index_key
    )
