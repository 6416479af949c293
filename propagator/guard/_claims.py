"""Reading the session a request carries: a bearer JWT or a cookie, and its claims."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

# Far above any real session token; bounds the work an oversized header can cause.
_MAX_TOKEN_CHARS = 16 * 1024

ClaimsVerifier: TypeAlias = Callable[
    [str], Mapping[str, Any] | Awaitable[Mapping[str, Any] | None] | None
]
"""Verifies a raw token and returns its claims, or ``None`` for a token it refuses.

It should return ``None`` rather than raise for a bad token: an exception propagates to the
framework like any other error in request handling.
"""


@dataclass(frozen=True, slots=True)
class Claims:
    """The claims a revocation check needs: ``sid``, ``sub``, ``org_id`` and ``iat``."""

    session_id: str | None = None
    user_id: str | None = None
    organization_id: str | None = None
    issued_at: float | None = None
    """Epoch seconds, as in ``iat``."""

    @classmethod
    def from_mapping(cls, claims: Mapping[str, Any]) -> Claims | None:
        """Take the claims from a decoded token; ``None`` when none names a session or user.

        A claim of the wrong type counts as absent; a missing or non-finite ``iat`` becomes
        ``None``, which any watermark refuses.
        """
        sid, sub, org = claims.get("sid"), claims.get("sub"), claims.get("org_id")
        session_id = sid if isinstance(sid, str) and sid else None
        user_id = sub if isinstance(sub, str) and sub else None
        organization_id = org if isinstance(org, str) and org else None
        if session_id is None and user_id is None and organization_id is None:
            return None
        iat = claims.get("iat")
        issued_at = (
            float(iat)
            if isinstance(iat, int | float) and not isinstance(iat, bool) and _finite(iat)
            else None
        )
        return cls(session_id, user_id, organization_id, issued_at)

    @classmethod
    def from_jwt(cls, token: str) -> Claims | None:
        """Decode a JWT's payload *without verifying it*; ``None`` when it is not a JWT.

        Verifying the signature stays the application's job: a forged token gets past this
        decoding but not past the application's own authentication.
        """
        if len(token) > _MAX_TOKEN_CHARS:
            return None
        parts = token.split(".")
        if len(parts) != 3:
            return None
        payload = parts[1]
        try:
            decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            claims = json.loads(decoded)
        except (binascii.Error, ValueError, RecursionError):
            return None
        return cls.from_mapping(claims) if isinstance(claims, dict) else None


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def cookie_value(cookie_header: str | None, name: str) -> str | None:
    """One cookie's value from a ``Cookie`` header; lenient, it never raises."""
    if not cookie_header:
        return None
    for pair in cookie_header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None
