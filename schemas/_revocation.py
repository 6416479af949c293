"""Pydantic models of the canonical revocation event (schema version 1)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION: Literal[1] = 1


class RevocationScope(StrEnum):
    """What a revocation ends: one session, every session of a user, or of an organization."""

    SESSION = "session"
    USER = "user"
    ORGANIZATION = "organization"


_SCOPE_REQUIRES = {
    RevocationScope.SESSION: "session_id",
    RevocationScope.USER: "user_id",
    RevocationScope.ORGANIZATION: "organization_id",
}


class RevocationEvent(BaseModel):
    """One revocation, in the same shape whichever identity provider announced it."""

    model_config = ConfigDict(
        frozen=True,
        # Consumers must keep working when a later minor revision adds fields.
        extra="ignore",
        title="RevocationEvent",
        json_schema_extra={
            "$id": "https://propagator.dev/schemas/revocation-event.v1.json",
            "description": (
                "A session revocation announced by an identity provider, verified and "
                "normalised by the propagator ingest service. Kafka key: user_id "
                "(organization_id, then session_id, when it is absent)."
            ),
        },
    )

    schema_version: Literal[1] = Field(
        default=SCHEMA_VERSION, description="Version of this schema; bumped on breaking changes."
    )
    event_id: str = Field(
        min_length=1,
        max_length=256,
        description="The identity provider's own event id; the idempotency key downstream.",
    )
    source: str = Field(
        min_length=1,
        max_length=128,
        description="Name of the configured source that received the event, e.g. 'workos'.",
    )
    source_kind: str = Field(
        min_length=1,
        max_length=64,
        description="Kind of the source: workos, standard-webhooks, oidc-backchannel, caep.",
    )
    type: str = Field(
        min_length=1,
        max_length=256,
        description="The identity provider's event type, e.g. 'session.revoked'.",
    )
    scope: RevocationScope = Field(description="What the revocation ends.")
    session_id: str | None = Field(
        default=None, max_length=512, description="Revoked session; required for scope 'session'."
    )
    user_id: str | None = Field(
        default=None,
        max_length=512,
        description="User the session belongs to; required for scope 'user'.",
    )
    organization_id: str | None = Field(
        default=None,
        max_length=512,
        description="Organization; required for scope 'organization'.",
    )
    occurred_at: AwareDatetime = Field(
        description="When the identity provider says the revocation happened (RFC 3339)."
    )
    received_at: AwareDatetime = Field(
        description="When ingest received the webhook (RFC 3339); the start of propagation latency."
    )
    payload_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="Lowercase hex SHA-256 of the raw webhook body, to match against IdP logs.",
    )

    @model_validator(mode="after")
    def _scope_has_its_subject(self) -> Self:
        field = _SCOPE_REQUIRES[self.scope]
        if not getattr(self, field):
            raise ValueError(f"scope {self.scope.value!r} requires {field}")
        return self

    @property
    def partition_key(self) -> str:
        """The Kafka key: one user's events share a partition, so they stay in order."""
        key = self.user_id or self.organization_id or self.session_id
        assert key is not None  # guaranteed by _scope_has_its_subject
        return key

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> RevocationEvent:
        return cls.model_validate_json(raw)
