"""What a revocation check answers: allowed or refused, and why."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Why a check answered the way it did."""

    NOT_REVOKED = "not_revoked"
    """Nothing in the denylist covers the session."""

    SESSION = "session"
    """The session's own key is in the denylist."""

    USER_WATERMARK = "user_watermark"
    """The session was issued before its user's watermark (e.g. a password reset)."""

    ORGANIZATION_WATERMARK = "organization_watermark"
    """The session was issued before its organization's watermark."""

    FAIL_CLOSED = "fail_closed"
    """Redis could not be consulted and the cache could not vouch: refused by policy."""

    FAIL_OPEN = "fail_open"
    """Redis could not be consulted and the cache could not vouch: allowed by policy."""


_REVOKING = frozenset({Reason.SESSION, Reason.USER_WATERMARK, Reason.ORGANIZATION_WATERMARK})


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one check.

    ``allowed`` is what a caller acts on. ``revoked`` is true only when the denylist proves
    the session revoked; a fail-closed refusal is not allowed and not revoked, so that an
    application can answer it with 503 rather than signing the user out.
    """

    allowed: bool
    reason: Reason
    revoked_at_ms: int | None = None
    """Epoch milliseconds: the session's revocation time or the watermark that covers it."""
    event_id: str | None = None
    """The identity provider's event id, when the denylist record names it."""

    @property
    def revoked(self) -> bool:
        return self.reason in _REVOKING


ALLOWED = Decision(allowed=True, reason=Reason.NOT_REVOKED)
FAIL_CLOSED = Decision(allowed=False, reason=Reason.FAIL_CLOSED)
FAIL_OPEN = Decision(allowed=True, reason=Reason.FAIL_OPEN)


def evaluate(
    session: Decision | None, user_ms: int, organization_ms: int, issued_at: float | None
) -> Decision:
    """Combine what is known about a session, its user and its organization into a decision.

    ``issued_at`` is in epoch seconds, as a JWT's ``iat``. A watermark covers a session when
    ``issued_at * 1000 < watermark_ms``: ``iat`` is truncated to the second, so a token issued
    in the same second as the watermark but after it is refused too, never the reverse. A
    session whose issue time is unknown (or not a number) is covered by any watermark.
    """
    if session is not None:
        return session
    if user_ms and not (issued_at is not None and issued_at * 1000 >= user_ms):
        return Decision(allowed=False, reason=Reason.USER_WATERMARK, revoked_at_ms=user_ms)
    if organization_ms and not (issued_at is not None and issued_at * 1000 >= organization_ms):
        return Decision(
            allowed=False, reason=Reason.ORGANIZATION_WATERMARK, revoked_at_ms=organization_ms
        )
    return ALLOWED
