"""WorkOS webhooks: the ``WorkOS-Signature`` header and the ``session.revoked`` event.

The signature is HMAC-SHA256, keyed by the secret's UTF-8 bytes, over
``"{t}.{raw body}"`` where ``t`` is the header's millisecond timestamp exactly as
sent; the header reads ``t=<ms>, v1=<hex>``. Like the Go and Node SDKs we accept
any whitespace around the parts, and like the Python and Go SDKs we refuse
timestamps too far in the past *and* in the future (default 180 s).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from propagator.errors import MalformedPayload, SignatureInvalid, TimestampOutOfTolerance
from propagator.sources._base import Delivery, Ignored, Outcome, SessionSeen, WebhookSource
from propagator.sources._mapping import summarise
from propagator.sources._secrets import SecretList, read_secrets
from schemas import RevocationEvent, RevocationScope

HEADER = "WorkOS-Signature"
KIND = "workos"


def sign_workos(secret: bytes, body: bytes, timestamp_ms: int) -> str:
    """The ``WorkOS-Signature`` header value WorkOS sends for this body."""
    digest = hmac.new(secret, f"{timestamp_ms}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp_ms}, v1={digest}"


def _parse_header(header: str) -> tuple[str, list[str]]:
    timestamp: str | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            timestamp = value.strip()
        elif key == "v1" and value.strip():
            signatures.append(value.strip())
    if not timestamp or not timestamp.isascii() or not timestamp.isdigit():
        raise SignatureInvalid("WorkOS-Signature has no valid t= timestamp")
    if not signatures:
        raise SignatureInvalid("WorkOS-Signature has no v1= signature")
    return timestamp, signatures


class WorkOSVerifier:
    """Checks ``WorkOS-Signature`` against every active secret, in constant time."""

    def __init__(
        self,
        *,
        secrets: Sequence[bytes],
        tolerance_s: float = 180.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secrets:
            raise ValueError("a WorkOS source needs at least one secret")
        if tolerance_s <= 0:
            raise ValueError("tolerance_s must be positive")
        self._secrets = tuple(secrets)
        self._tolerance_ms = tolerance_s * 1000
        self._clock = clock

    def verify(self, header: str | None, body: bytes) -> None:
        if not header:
            raise SignatureInvalid(f"missing {HEADER} header")
        timestamp, signatures = _parse_header(header)
        skew_ms = abs(self._clock() * 1000 - int(timestamp))
        if skew_ms > self._tolerance_ms:
            raise TimestampOutOfTolerance(
                f"timestamp is {skew_ms / 1000:.0f}s away from now "
                f"(tolerance {self._tolerance_ms / 1000:.0f}s)"
            )
        signed = timestamp.encode() + b"." + body
        provided = [s.encode("utf-8", "replace") for s in signatures]
        for secret in self._secrets:
            expected = hmac.new(secret, signed, hashlib.sha256).hexdigest().encode()
            if any(hmac.compare_digest(expected, candidate) for candidate in provided):
                return
        raise SignatureInvalid("no WorkOS-Signature v1 matches an active secret")


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    event: str
    data: dict[str, Any]
    created_at: AwareDatetime


class _Session(BaseModel):
    """The fields of WorkOS's session object that we use; both known shapes fit."""

    model_config = ConfigDict(extra="ignore")

    id: str
    user_id: str
    organization_id: str | None = None
    ended_at: AwareDatetime | None = None
    created_at: AwareDatetime | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    auth_method: str | None = None


class _UserSubject(BaseModel):
    """An object that names a user: a password reset, a membership, a directory user."""

    model_config = ConfigDict(extra="ignore")

    user_id: str
    organization_id: str | None = None


class _DirectoryUser(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    user_id: str | None = None
    organization_id: str | None = None


class _IdOnly(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str


def _session_revoked(data: dict[str, Any], created_at: datetime) -> dict[str, Any]:
    session = _Session.model_validate(data)
    return {
        "scope": RevocationScope.SESSION,
        "session_id": session.id,
        "user_id": session.user_id,
        "organization_id": session.organization_id,
        "occurred_at": session.ended_at or created_at,
    }


def _user_deleted(data: dict[str, Any], created_at: datetime) -> dict[str, Any]:
    return {
        "scope": RevocationScope.USER,
        "user_id": _IdOnly.model_validate(data).id,
        "occurred_at": created_at,
    }


def _names_a_user(data: dict[str, Any], created_at: datetime) -> dict[str, Any]:
    subject = _UserSubject.model_validate(data)
    return {
        "scope": RevocationScope.USER,
        "user_id": subject.user_id,
        "organization_id": subject.organization_id,
        "occurred_at": created_at,
    }


def _directory_user_deleted(data: dict[str, Any], created_at: datetime) -> dict[str, Any]:
    # A directory user linked to an AuthKit user carries user_id; otherwise its own id is the
    # only handle, and applications keyed by directory user id can still act on it.
    user = _DirectoryUser.model_validate(data)
    return {
        "scope": RevocationScope.USER,
        "user_id": user.user_id or user.id,
        "organization_id": user.organization_id,
        "occurred_at": created_at,
    }


def _organization_deleted(data: dict[str, Any], created_at: datetime) -> dict[str, Any]:
    return {
        "scope": RevocationScope.ORGANIZATION,
        "organization_id": _IdOnly.model_validate(data).id,
        "occurred_at": created_at,
    }


# The WorkOS event types that end sessions, and how each maps to a canonical revocation.
_MAPPINGS: dict[str, Callable[[dict[str, Any], datetime], dict[str, Any]]] = {
    "session.revoked": _session_revoked,
    "user.deleted": _user_deleted,
    "password_reset.succeeded": _names_a_user,
    "organization_membership.deleted": _names_a_user,
    "dsync.user.deleted": _directory_user_deleted,
    "organization.deleted": _organization_deleted,
}

ACTED_ON = frozenset(_MAPPINGS)


class WorkOSConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    kind: Literal["workos"]
    secrets: SecretList = Field(default_factory=list)
    secret_file: Path | None = None
    tolerance_s: float = Field(default=180.0, gt=0)


class WorkOSSource(WebhookSource):
    """A WorkOS webhook endpoint."""

    kind = KIND

    def __init__(self, *, name: str, verifier: WorkOSVerifier) -> None:
        self._name = name
        self._verifier = verifier

    @property
    def name(self) -> str:
        return self._name

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        self._verifier.verify(headers.get(HEADER), body)

    async def receive(self, delivery: Delivery) -> Sequence[Outcome]:
        self.verify(delivery.headers, delivery.body)
        return [self.parse(delivery.body, delivery.received_at)]

    def parse(self, body: bytes, received_at: datetime) -> Outcome:
        try:
            envelope = _Envelope.model_validate_json(body)
        except ValidationError as exc:
            raise MalformedPayload(f"not a WorkOS event: {summarise(exc)}") from exc
        if envelope.event == "session.created":
            return self._session_seen(envelope)
        mapping = _MAPPINGS.get(envelope.event)
        if mapping is None:
            return Ignored(event_id=envelope.id, type=envelope.event)
        try:
            return RevocationEvent(
                event_id=envelope.id,
                source=self._name,
                source_kind=KIND,
                type=envelope.event,
                received_at=received_at,
                payload_sha256=hashlib.sha256(body).hexdigest(),
                **mapping(envelope.data, envelope.created_at),
            )
        except ValidationError as exc:
            raise MalformedPayload(f"{envelope.event} data: {summarise(exc)}") from exc

    def _session_seen(self, envelope: _Envelope) -> SessionSeen:
        try:
            session = _Session.model_validate(envelope.data)
        except ValidationError as exc:
            raise MalformedPayload(f"session.created data: {summarise(exc)}") from exc
        return SessionSeen(
            event_id=envelope.id,
            type=envelope.event,
            source=self._name,
            session_id=session.id,
            user_id=session.user_id,
            organization_id=session.organization_id,
            ip_address=session.ip_address,
            user_agent=session.user_agent,
            device=session.auth_method,
            created_at=(session.created_at or envelope.created_at).isoformat(),
        )


def build(config: WorkOSConfig) -> WorkOSSource:
    secrets = [s.encode() for s in read_secrets(config.secrets, config.secret_file)]
    verifier = WorkOSVerifier(secrets=secrets, tolerance_s=config.tolerance_s)
    return WorkOSSource(name=config.name, verifier=verifier)
