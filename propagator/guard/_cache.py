"""The guard's bounded in-process view of the denylist.

Everything the denylist says only ever grows more restrictive until its keys expire: a
session, once revoked, stays revoked, and watermarks only rise. So facts that *restrict* can
be merged in any order (revoked wins, the higher watermark wins). Facts that *permit* ("this
session is not revoked", "this user has no watermark") are only as good as the moment they
were read; the guard inserts them only when it knows that every later change reaches it by
push (``trusted``), and otherwise only merges them into entries that push already keeps.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final, TypeVar

from propagator.guard._contract import Notice
from propagator.guard._decision import ALLOWED, Decision, Reason

_V = TypeVar("_V")
_MISSING: Final = object()


class DenylistCache:
    """Three bounded maps (sessions, users, organizations), evicting the oldest entry first.

    Insertion order, not recency: a hit moves nothing, so the hit path is one dict lookup per
    subject. An entry evicted while still in use costs one Redis read when next checked.
    """

    def __init__(self, *, max_entries: int) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._max = max_entries
        # None: known not revoked; a Decision: revoked, with its details.
        # Ordered dicts: evicting the oldest is O(1) (a plain dict's first key is not).
        self._sessions: OrderedDict[str, Decision | None] = OrderedDict()
        # 0: known to have no watermark.
        self._users: OrderedDict[str, int] = OrderedDict()
        self._organizations: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions) + len(self._users) + len(self._organizations)

    def decide(
        self,
        session_id: str | None,
        user_id: str | None,
        organization_id: str | None,
        issued_at: float | None,
    ) -> Decision | None:
        """Answer from the cache alone; ``None`` when an entry it would need is missing.

        A refusal is returned as soon as one cached entry proves it, even if others are
        missing: it cannot be overturned by what the missing entries hold.
        """
        missing = False
        if session_id is not None:
            session = self._sessions.get(session_id, _MISSING)
            if session is _MISSING:
                missing = True
            elif session is not None:
                return session  # type: ignore[return-value]
        if user_id is not None:
            user_ms = self._users.get(user_id)
            if user_ms is None:
                missing = True
            elif user_ms and (issued_at is None or issued_at * 1000 < user_ms):
                return Decision(allowed=False, reason=Reason.USER_WATERMARK, revoked_at_ms=user_ms)
        if organization_id is not None:
            org_ms = self._organizations.get(organization_id)
            if org_ms is None:
                missing = True
            elif org_ms and (issued_at is None or issued_at * 1000 < org_ms):
                return Decision(
                    allowed=False, reason=Reason.ORGANIZATION_WATERMARK, revoked_at_ms=org_ms
                )
        return None if missing else ALLOWED

    def cached_session(self, session_id: str) -> Decision | None:
        """The cached revocation of a session, if the cache holds one."""
        return self._sessions.get(session_id)

    def cached_watermark(self, scope: str, subject: str) -> int:
        """A cached watermark, 0 when there is none or it is not cached."""
        return (self._users if scope == "user" else self._organizations).get(subject, 0)

    def store_session(self, session_id: str, session: Decision | None, *, trusted: bool) -> None:
        """Merge what Redis said about a session: a revocation always, absence if trusted."""
        if session is not None:
            if self._sessions.get(session_id) is None:
                self._put(self._sessions, session_id, session)
        elif trusted and session_id not in self._sessions:
            self._put(self._sessions, session_id, None)

    def store_watermark(self, scope: str, subject: str, value_ms: int, *, trusted: bool) -> None:
        """Merge a watermark read from Redis: raise a cached one, insert only if trusted."""
        entries = self._users if scope == "user" else self._organizations
        current = entries.get(subject)
        if current is not None:
            if value_ms > current:
                entries[subject] = value_ms
        elif trusted:
            self._put(entries, subject, value_ms)

    def apply(self, notice: Notice) -> None:
        """Apply a pushed revocation.

        A revoked session is inserted even when not cached, so that its next check is a hit.
        A watermark only raises an entry already cached: a notice carries the batch's value,
        which may be lower than the stored one when events arrived out of order, so inserting
        it could understate the watermark. An uncached subject is read from Redis instead.
        """
        if notice.session is not None:
            self.store_session(notice.subject, notice.session, trusted=False)
        else:
            self.store_watermark(notice.scope, notice.subject, notice.watermark_ms, trusted=False)

    def ids(self) -> tuple[list[str], list[str], list[str]]:
        """Every cached subject, for a re-sync: sessions, users, organizations."""
        return list(self._sessions), list(self._users), list(self._organizations)

    def discard(self, scope: str, subject: str) -> None:
        """Forget one subject, so that its next check reads Redis."""
        if scope == "session":
            self._sessions.pop(subject, None)
        else:
            (self._users if scope == "user" else self._organizations).pop(subject, None)

    def clear(self) -> None:
        self._sessions.clear()
        self._users.clear()
        self._organizations.clear()

    def _put(self, entries: OrderedDict[str, _V], key: str, value: _V) -> None:
        entries[key] = value
        if len(entries) > self._max:
            entries.popitem(last=False)
