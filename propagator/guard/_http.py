"""What the aiohttp and ASGI middlewares share: token → claims → decision → answer."""

from __future__ import annotations

import inspect
import json

from propagator.guard._claims import Claims, ClaimsVerifier
from propagator.guard._decision import Decision
from propagator.guard._guard import RevocationGuard


class SessionChecker:
    """What the middlewares share: token → claims → decision."""

    def __init__(self, *, guard: RevocationGuard, verifier: ClaimsVerifier | None) -> None:
        self._guard = guard
        self._verifier = verifier

    async def decide(self, token: str | None) -> Decision | None:
        """The guard's decision for a token; ``None`` when the token names no session."""
        if not token:
            return None
        if self._verifier is None:
            claims = Claims.from_jwt(token)
        else:
            verified = self._verifier(token)
            if inspect.isawaitable(verified):
                verified = await verified
            claims = None if verified is None else Claims.from_mapping(verified)
        if claims is None:
            return None
        return await self._guard.check(
            claims.session_id, claims.user_id, claims.organization_id, claims.issued_at
        )


REVOKED_STATUS = 401
REVOKED_BODY = json.dumps(
    {"error": {"code": "session_revoked", "message": "This session has been revoked."}}
).encode()
REVOKED_HEADERS = (
    ("WWW-Authenticate", 'Bearer error="invalid_token", error_description="session revoked"'),
    ("Cache-Control", "no-store"),
)
UNAVAILABLE_STATUS = 503
UNAVAILABLE_BODY = json.dumps(
    {
        "error": {
            "code": "revocation_check_unavailable",
            "message": "The session's revocation status cannot be checked right now.",
        }
    }
).encode()
UNAVAILABLE_HEADERS = (("Retry-After", "1"), ("Cache-Control", "no-store"))


def refusal(decision: Decision) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    """Status, JSON body and headers answering a refused decision.

    A revoked session is a 401 the client should act on (sign in again); a fail-closed
    refusal is a 503, so that a Redis outage does not sign everybody out.
    """
    if decision.revoked:
        return REVOKED_STATUS, REVOKED_BODY, REVOKED_HEADERS
    return UNAVAILABLE_STATUS, UNAVAILABLE_BODY, UNAVAILABLE_HEADERS
