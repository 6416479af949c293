"""The Redis denylist contract as the guard reads it: key names and push notices.

The ``redis-denylist`` sink writes, under a prefix (default ``propagator:revoked:``)::

    {prefix}session:{session_id}      JSON {event_id, user_id, organization_id, revoked_at, source}
    {prefix}user:{user_id}            epoch-ms watermark: sessions issued before it are revoked
    {prefix}organization:{org_id}     epoch-ms watermark, likewise for a whole organization

and, after the writes of every batch, publishes one notice per applied revocation on the
channel ``{prefix}events``::

    {"version": 1, "scope": "session", "subject": "<session id>", "event_id": "...",
     "record": {<the session key's JSON record>}}
    {"version": 1, "scope": "user" | "organization", "subject": "<id>", "event_id": "...",
     "watermark_ms": <epoch ms>}

A notice says what the batch wrote, not what the key holds now: a late event's watermark can
be lower than the stored one (the sink never lowers it), and a duplicate session revocation
does not replace the first record (``SET NX``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from propagator.guard._decision import Decision, Reason

DEFAULT_PREFIX = "propagator:revoked:"
NOTICE_VERSION = 1


@dataclass(frozen=True, slots=True)
class DenylistKeys:
    """Names of the denylist's keys and notice channel under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def session(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def user(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}"

    def organization(self, organization_id: str) -> str:
        return f"{self.prefix}organization:{organization_id}"

    @property
    def channel(self) -> str:
        """The pub/sub channel on which the sink announces every applied revocation."""
        return f"{self.prefix}events"


@dataclass(frozen=True, slots=True)
class Notice:
    """One announced revocation: a revoked session, or a raised watermark."""

    scope: str
    subject: str
    session: Decision | None = None
    watermark_ms: int = 0


class MalformedValue(ValueError):
    """A denylist value or notice that does not follow the contract."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def session_decision(raw: bytes | str) -> Decision:
    """The decision a session key's value stands for; the key's existence revokes the session.

    The record's details are best effort: a record that cannot be read still revokes.
    """
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        record = None
    return _session_from_record(record)


def _session_from_record(record: object) -> Decision:
    revoked_at_ms: int | None = None
    event_id: str | None = None
    if isinstance(record, dict):
        if isinstance(record.get("event_id"), str):
            event_id = record["event_id"]
        revoked_at = record.get("revoked_at")
        if isinstance(revoked_at, str):
            try:
                revoked_at_ms = int(datetime.fromisoformat(revoked_at).timestamp() * 1000)
            except (ValueError, OverflowError):
                revoked_at_ms = None
    return Decision(
        allowed=False, reason=Reason.SESSION, revoked_at_ms=revoked_at_ms, event_id=event_id
    )


def watermark(raw: bytes | str | None) -> int:
    """A watermark key's value in epoch milliseconds; 0 when the key is absent."""
    if raw is None:
        return 0
    try:
        value = int(_text(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedValue(f"watermark is not an integer: {raw!r}") from exc
    if value < 0:
        raise MalformedValue(f"watermark is negative: {value}")
    return value


def parse_notice(raw: bytes | str) -> Notice:
    """Read one notice from the channel; raises ``MalformedValue`` when it is not one."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MalformedValue("notice is not JSON") from exc
    if not isinstance(body, dict):
        raise MalformedValue("notice is not a JSON object")
    scope, subject = body.get("scope"), body.get("subject")
    if not isinstance(subject, str) or not subject:
        raise MalformedValue("notice has no subject")
    if scope == "session":
        return Notice(
            scope=scope, subject=subject, session=_session_from_record(body.get("record"))
        )
    if scope in ("user", "organization"):
        value = body.get("watermark_ms")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise MalformedValue("watermark notice has no positive watermark_ms")
        return Notice(scope=scope, subject=subject, watermark_ms=value)
    raise MalformedValue(f"notice has an unknown scope: {scope!r}")
