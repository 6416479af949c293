"""Shared Signals Framework: a CAEP ``session-revoked`` Security Event Token pushed per RFC 8935.

The body is the compact JWS (``Content-Type: application/secevent+jwt``), header ``typ``
``secevent+jwt``, verified against the transmitter's JWKS with ``iss``, ``aud`` and the
``events`` claim checked. The subject (``sub_id``) decides the scope: a session (``opaque`` or
``complex.session``) is session scope; a user (``email``, ``iss_sub``, ``account`` or
``complex.user``) is user scope. Answers are 202, or 400 with RFC 8935's
``{"err": ..., "description": ...}`` and the IANA error codes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from propagator.errors import (
    MalformedPayload,
    PropagatorError,
    RequestRejected,
    TokenInvalid,
    Unauthorized,
)
from propagator.sources._base import Delivery, Ignored, Outcome, Reply, Result, WebhookSource
from propagator.sources._jwt import DEFAULT_ALGORITHMS, JWKSCache, allow_list, verify_token
from propagator.sources._mapping import as_datetime, summarise
from schemas import RevocationEvent, RevocationScope

KIND = "ssf"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
CONTENT_TYPE = "application/secevent+jwt"

# Our precise codes, as the RFC 8935 / IANA "Security Event Token Error Codes".
_SET_ERRORS = {
    "invalid_issuer": "invalid_issuer",
    "invalid_audience": "invalid_audience",
    "unknown_key": "invalid_key",
    "invalid_signature": "invalid_key",
    "unsupported_algorithm": "invalid_key",
    "unauthorized": "authentication_failed",
}


class SSFConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    kind: Literal["ssf"]
    issuer: str
    audience: str | list[str]
    jwks_uri: str
    # The value the transmitter must send in Authorization (stream config `authorization_header`).
    authorization_header: SecretStr | None = None
    algorithms: list[str] = Field(default_factory=lambda: list(DEFAULT_ALGORITHMS))
    leeway_s: float = Field(default=60.0, ge=0)
    jwks_max_age_s: float = Field(default=3600.0, gt=0)
    jwks_min_refresh_interval_s: float = Field(default=30.0, ge=0)


def _subject(sub_id: Any) -> dict[str, Any]:
    """Scope and ids named by an RFC 9493 / SSF subject identifier."""
    if not isinstance(sub_id, dict):
        raise TokenInvalid("sub_id must be an object", code="invalid_subject")
    fmt = sub_id.get("format")
    if fmt == "complex":
        session = sub_id.get("session")
        user = sub_id.get("user")
        tenant = sub_id.get("tenant")
        user_id = _subject(user)["user_id"] if user is not None else None
        org_id = _string(tenant.get("id")) if isinstance(tenant, dict) else None
        if session is not None:
            session_id = _subject(session).get("session_id")
            if not session_id:
                raise TokenInvalid("complex.session must be an opaque id", code="invalid_subject")
            return {
                "scope": RevocationScope.SESSION,
                "session_id": session_id,
                "user_id": user_id,
                "organization_id": org_id,
            }
        if user_id:
            return {"scope": RevocationScope.USER, "user_id": user_id, "organization_id": org_id}
        raise TokenInvalid("complex subject names no session or user", code="invalid_subject")
    if fmt == "opaque":
        return {"scope": RevocationScope.SESSION, "session_id": _string(sub_id.get("id"))}
    if fmt == "email":
        return {"scope": RevocationScope.USER, "user_id": _string(sub_id.get("email"))}
    if fmt == "iss_sub":
        return {"scope": RevocationScope.USER, "user_id": _string(sub_id.get("sub"))}
    if fmt == "account":
        return {"scope": RevocationScope.USER, "user_id": _string(sub_id.get("uri"))}
    raise TokenInvalid(f"unsupported subject format {str(fmt)[:32]!r}", code="invalid_subject")


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class SSFSource(WebhookSource):
    kind = KIND
    success_status = 202

    def __init__(
        self,
        *,
        name: str,
        issuer: str,
        audience: str | Sequence[str],
        keys: JWKSCache,
        authorization: str | None = None,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway_s: float = 60.0,
    ) -> None:
        self._name = name
        self._issuer = issuer
        self._audience = audience
        self._keys = keys
        self._authorization = authorization.encode() if authorization else None
        self._algorithms = allow_list(algorithms)
        self._leeway_s = leeway_s

    @property
    def name(self) -> str:
        return self._name

    async def receive(self, delivery: Delivery) -> Sequence[Outcome]:
        if self._authorization is not None:
            sent = delivery.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(sent, self._authorization):
                raise Unauthorized("the Authorization header does not match the stream's")
        if delivery.content_type != CONTENT_TYPE:
            raise MalformedPayload(f"expected Content-Type {CONTENT_TYPE}")
        try:
            token = delivery.body.decode("ascii").strip()
        except UnicodeDecodeError as exc:
            raise MalformedPayload("a SET is ASCII") from exc
        claims = await verify_token(
            token,
            keys=self._keys,
            issuer=self._issuer,
            audience=self._audience,
            algorithms=self._algorithms,
            required=("iss", "aud", "iat", "jti"),
            leeway_s=self._leeway_s,
            expected_typ=("secevent+jwt", "application/secevent+jwt"),
        )
        return [self._outcome(claims, delivery)]

    def _outcome(self, claims: dict[str, Any], delivery: Delivery) -> Outcome:
        events = claims.get("events")
        jti = claims.get("jti")
        if not isinstance(events, dict) or not events:
            raise TokenInvalid("a SET needs a non-empty events claim", code="invalid_events")
        if not isinstance(jti, str) or not jti:
            raise TokenInvalid("jti must be a non-empty string", code="missing_claim")
        event = events.get(SESSION_REVOKED)
        if event is None:
            return Ignored(event_id=jti, type=str(next(iter(events)))[:256])
        if not isinstance(event, dict):
            raise TokenInvalid("the session-revoked event must be an object", code="invalid_events")
        # SSF puts the subject in sub_id; CAEP drafts put it inside the event.
        subject = _subject(claims.get("sub_id", event.get("subject")))
        occurred = as_datetime(event.get("event_timestamp")) or datetime.fromtimestamp(
            claims["iat"], tz=UTC
        )
        try:
            return RevocationEvent(
                event_id=jti,
                source=self._name,
                source_kind=KIND,
                type=SESSION_REVOKED,
                occurred_at=occurred,
                received_at=delivery.received_at,
                payload_sha256=hashlib.sha256(delivery.body).hexdigest(),
                **subject,
            )
        except ValidationError as exc:
            raise TokenInvalid(
                f"unusable claims: {summarise(exc)}", code="invalid_subject"
            ) from exc

    def reply(self, results: Sequence[Result]) -> Reply:
        return Reply(202, None)

    def reply_error(self, error: PropagatorError) -> Reply:
        err = _SET_ERRORS.get(error.code, "invalid_request")
        body = {"err": err, "description": error.message}
        if isinstance(error, RequestRejected) and error.status == 400:
            return Reply(400, body)
        return Reply(error.status, body)


def build(config: SSFConfig, *, http: aiohttp.ClientSession) -> SSFSource:
    return SSFSource(
        name=config.name,
        issuer=config.issuer,
        audience=config.audience,
        keys=JWKSCache.from_config(config, http=http),
        authorization=(
            config.authorization_header.get_secret_value() if config.authorization_header else None
        ),
        algorithms=config.algorithms,
        leeway_s=config.leeway_s,
    )
