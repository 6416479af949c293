"""OpenID Connect Back-Channel Logout 1.0: a form-encoded, signed ``logout_token``.

Validated as §2.6 says: signature against the issuer's JWKS; ``alg`` in an allow-list and
never ``none``; ``iss``, ``aud``, ``iat`` and ``exp``; ``sub`` and/or ``sid``; the
``events`` member with the back-channel-logout event; no ``nonce``. The ``jti`` is the event
id, so a replayed token is published once. Answers are 200, or 400 with
``{"error": "invalid_request", ...}``, always with ``Cache-Control: no-store`` (§2.8).
A token with ``sid`` ends that session; one with only ``sub`` ends all of the user's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qs

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from propagator.errors import (
    DependencyUnavailable,
    MalformedPayload,
    PropagatorError,
    RequestRejected,
    TokenInvalid,
)
from propagator.sources._base import Delivery, Outcome, Reply, Result, WebhookSource
from propagator.sources._jwt import DEFAULT_ALGORITHMS, JWKSCache, allow_list, verify_token
from propagator.sources._mapping import summarise
from schemas import RevocationEvent, RevocationScope

KIND = "oidc-backchannel"
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
_NO_STORE = {"Cache-Control": "no-store"}


class OIDCBackchannelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    kind: Literal["oidc-backchannel"]
    issuer: str
    audience: str | list[str]
    jwks_uri: str
    algorithms: list[str] = Field(default_factory=lambda: list(DEFAULT_ALGORITHMS))
    leeway_s: float = Field(default=60.0, ge=0)
    jwks_max_age_s: float = Field(default=3600.0, gt=0)
    jwks_min_refresh_interval_s: float = Field(default=30.0, ge=0)


class OIDCBackchannelSource(WebhookSource):
    kind = KIND

    def __init__(
        self,
        *,
        name: str,
        issuer: str,
        audience: str | Sequence[str],
        keys: JWKSCache,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway_s: float = 60.0,
    ) -> None:
        self._name = name
        self._issuer = issuer
        self._audience = audience
        self._keys = keys
        self._algorithms = allow_list(algorithms)
        self._leeway_s = leeway_s

    @property
    def name(self) -> str:
        return self._name

    async def receive(self, delivery: Delivery) -> Sequence[Outcome]:
        if delivery.content_type != "application/x-www-form-urlencoded":
            raise MalformedPayload("expected application/x-www-form-urlencoded")
        try:
            form = parse_qs(delivery.body.decode("utf-8"), strict_parsing=False)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedPayload("the form is not UTF-8") from exc
        tokens = form.get("logout_token", [])
        if len(tokens) != 1 or not tokens[0]:
            raise MalformedPayload("exactly one logout_token is required")
        claims = await verify_token(
            tokens[0],
            keys=self._keys,
            issuer=self._issuer,
            audience=self._audience,
            algorithms=self._algorithms,
            required=("iss", "aud", "iat", "exp", "jti"),
            leeway_s=self._leeway_s,
        )
        return [self._event(claims, delivery)]

    def _event(self, claims: dict[str, Any], delivery: Delivery) -> RevocationEvent:
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(LOGOUT_EVENT), dict):
            raise TokenInvalid(
                "events must hold the back-channel-logout event", code="invalid_events"
            )
        if "nonce" in claims:
            raise TokenInvalid("a logout token must not contain nonce", code="nonce_present")
        sid, sub, jti = claims.get("sid"), claims.get("sub"), claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise TokenInvalid("jti must be a non-empty string", code="missing_claim")
        for name, value in (("sid", sid), ("sub", sub)):
            if value is not None and (not isinstance(value, str) or not value):
                raise TokenInvalid(f"{name} must be a non-empty string", code="invalid_subject")
        if not sid and not sub:
            raise TokenInvalid("a logout token needs sub or sid", code="missing_subject")
        try:
            return RevocationEvent(
                event_id=jti,
                source=self._name,
                source_kind=KIND,
                type="backchannel-logout",
                scope=RevocationScope.SESSION if sid else RevocationScope.USER,
                session_id=sid,
                user_id=sub,
                occurred_at=datetime.fromtimestamp(claims["iat"], tz=UTC),
                received_at=delivery.received_at,
                payload_sha256=hashlib.sha256(delivery.body).hexdigest(),
            )
        except (ValidationError, OverflowError, OSError, ValueError) as exc:
            detail = summarise(exc) if isinstance(exc, ValidationError) else str(exc)
            raise TokenInvalid(f"unusable claims: {detail}", code="invalid_claims") from exc

    def reply(self, results: Sequence[Result]) -> Reply:
        return Reply(200, None, _NO_STORE)

    def reply_error(self, error: PropagatorError) -> Reply:
        if isinstance(error, DependencyUnavailable):
            body = {"error": "temporarily_unavailable", "error_description": error.message}
            return Reply(error.status, body, _NO_STORE)
        body = {"error": "invalid_request", "error_description": error.message, "code": error.code}
        # §2.8: every failed validation is a 400; transport limits keep their own status.
        status = (
            400
            if isinstance(error, RequestRejected) and error.status in (400, 401)
            else error.status
        )
        return Reply(status, body, _NO_STORE)


def build(config: OIDCBackchannelConfig, *, http: aiohttp.ClientSession) -> OIDCBackchannelSource:
    return OIDCBackchannelSource(
        name=config.name,
        issuer=config.issuer,
        audience=config.audience,
        keys=JWKSCache.from_config(config, http=http),
        algorithms=config.algorithms,
        leeway_s=config.leeway_s,
    )
