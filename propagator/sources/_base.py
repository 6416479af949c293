"""The shape every webhook source has, and the answers it gives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from propagator.errors import PropagatorError
from schemas import RevocationEvent


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook request as a source sees it: raw bytes, case-insensitive headers."""

    method: str
    headers: Mapping[str, str]
    body: bytes
    content_type: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Ignored:
    """A verified event of a type the service does not act on: acknowledged, not published."""

    event_id: str
    type: str


@dataclass(frozen=True, slots=True)
class SessionSeen:
    """A session an identity provider announced (``session.created``): recorded, not published."""

    event_id: str
    type: str
    source: str
    session_id: str
    user_id: str
    organization_id: str | None
    ip_address: str | None
    user_agent: str | None
    device: str | None
    created_at: str


Outcome = RevocationEvent | Ignored | SessionSeen
Status = Literal["published", "duplicate", "ignored", "recorded"]


@dataclass(frozen=True, slots=True)
class Result:
    """What became of one event of a delivery."""

    event_id: str
    type: str
    status: Status


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer, rendered as JSON (or an empty body when ``body`` is None)."""

    status: int
    body: dict[str, Any] | None
    headers: Mapping[str, str] = field(default_factory=dict)


class Source(Protocol):
    """One configured webhook endpoint, served at ``POST /webhooks/{name}``."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    async def receive(self, delivery: Delivery) -> Sequence[Outcome]:
        """Authenticate the delivery, then map it to events; raise RequestRejected if not."""

    def reply(self, results: Sequence[Result]) -> Reply:
        """The success answer the sender expects."""

    def reply_error(self, error: PropagatorError) -> Reply:
        """The error answer in the sender's protocol (its status and body shape)."""

    def challenge(self, delivery: Delivery) -> Reply | None:
        """The answer to a GET handshake, or None when the kind has none."""


class WebhookSource:
    """Default answers: 200 with a status per event; errors as ``{"error": {code, message}}``."""

    success_status = 200

    def reply(self, results: Sequence[Result]) -> Reply:
        if len(results) == 1:
            only = results[0]
            return Reply(
                self.success_status,
                {"status": only.status, "event_id": only.event_id, "type": only.type},
            )
        return Reply(
            self.success_status,
            {
                "status": "accepted",
                "events": [
                    {"status": r.status, "event_id": r.event_id, "type": r.type} for r in results
                ],
            },
        )

    def reply_error(self, error: PropagatorError) -> Reply:
        return Reply(error.status, {"error": {"code": error.code, "message": error.message}})

    def challenge(self, delivery: Delivery) -> Reply | None:
        return None
