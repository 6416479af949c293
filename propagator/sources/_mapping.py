"""Operator-configurable mapping from a JSON webhook body to a canonical revocation event.

Used by the kinds whose senders are many (Standard Webhooks, generic HMAC): an event type
maps to a scope, and dotted paths say where the session, user and organization ids are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from propagator.errors import MalformedPayload
from schemas import RevocationEvent, RevocationScope

# Where the ids are when an operator names only a scope: the Clerk/Svix shape, `data` being
# the session (session scope), the user (user scope) or the organization.
_DEFAULT_PATHS: dict[RevocationScope, dict[str, str]] = {
    RevocationScope.SESSION: {"session_id": "data.id", "user_id": "data.user_id"},
    RevocationScope.USER: {"user_id": "data.id"},
    RevocationScope.ORGANIZATION: {"organization_id": "data.id"},
}


class EventMapping(BaseModel):
    """How one event type becomes a revocation: its scope and the dotted paths of its ids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: RevocationScope
    session_id: str | None = None
    user_id: str | None = None
    organization_id: str | None = None
    occurred_at: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _scope_shorthand(cls, value: Any) -> Any:
        # `session.revoked: session` is shorthand for `{scope: session}`.
        return {"scope": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _default_paths(self) -> Self:
        for name, path in _DEFAULT_PATHS[self.scope].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, path)
        return self


def lookup(document: Any, path: str | None) -> Any:
    """The value at a dotted path (``data.user_id``), or None when any step is missing."""
    if path is None:
        return None
    value = document
    for step in path.split("."):
        if not isinstance(value, Mapping) or step not in value:
            return None
        value = value[step]
    return value


def _as_id(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str | int):
        return str(value) or None
    raise MalformedPayload(f"expected an id, found {type(value).__name__}")


def as_datetime(value: Any) -> datetime | None:
    """Epoch seconds or milliseconds, or an RFC 3339 string, as an aware datetime."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 100_000_000_000 else value
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise MalformedPayload(f"timestamp out of range: {value}") from exc
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise MalformedPayload(f"not an RFC 3339 time: {value[:64]!r}") from exc
        return parsed if parsed.tzinfo else None
    return None


def build_event(
    document: Any,
    mapping: EventMapping,
    *,
    event_id: str,
    event_type: str,
    source: str,
    source_kind: str,
    body: bytes,
    received_at: datetime,
    default_occurred_at: datetime,
) -> RevocationEvent:
    """The canonical event a mapped body describes; MalformedPayload when ids are missing."""
    try:
        return RevocationEvent(
            event_id=event_id,
            source=source,
            source_kind=source_kind,
            type=event_type,
            scope=mapping.scope,
            session_id=_as_id(lookup(document, mapping.session_id)),
            user_id=_as_id(lookup(document, mapping.user_id)),
            organization_id=_as_id(lookup(document, mapping.organization_id)),
            occurred_at=as_datetime(lookup(document, mapping.occurred_at)) or default_occurred_at,
            received_at=received_at,
            payload_sha256=hashlib.sha256(body).hexdigest(),
        )
    except ValidationError as exc:
        raise MalformedPayload(f"{event_type}: {summarise(exc)}") from exc


def summarise(exc: ValidationError) -> str:
    """A validation error in one line, naming fields but never echoing input values."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
    )
