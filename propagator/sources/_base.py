"""The shape every webhook source has."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from schemas import RevocationEvent


@dataclass(frozen=True, slots=True)
class Ignored:
    """A verified event of a type the service does not act on: acknowledged, not published."""

    event_id: str
    type: str


Outcome = RevocationEvent | Ignored


class Source(Protocol):
    """One configured webhook endpoint, served at ``POST /webhooks/{name}``."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise SignatureInvalid or TimestampOutOfTolerance unless the body is authentic."""

    def parse(self, body: bytes, received_at: datetime) -> Outcome:
        """Map a verified body to a canonical event; raise ``MalformedPayload`` if it is not one."""
